# The guest of bench/qemu_compare.sh: a multiboot (v1) ELF that QEMU's `-kernel` loads and
# enters in 32-bit protected mode, flat segments, paging off. It fills every 4 KiB page from
# 2 MiB to the end of the memory below the PCI hole (a non-zero word in each, so none travels
# as a zero page), says "R" on the debug console, then touches one page at a time forever,
# paced by the TSC, timing each touch: a touch that took longer than STALL_TICKS is reported as
# "S<hex ticks>\n" on the debug console (port 0xe9, `-debugcon`), and every 4096th touch as
# "T\n" (its progress, from which the script takes its touch rate). The script converts ticks
# with the TSC rate it measured on the host: under TCG the guest's RDTSC is the host's TSC.
# One word of stack (below 640 KiB, outside the pages it touches) holds the touch count.
#
# Assembled at bench time with GNU as; the script passes the knobs with --defsym:
#   PATTERN      0 random (every page alike), 1 hot (nine touches in ten in the first tenth)
#   PERIOD_TICKS TSC ticks between touch starts (the touch rate)
#   STALL_TICKS  the TSC ticks over which a touch counts as a stall
# Registers for the whole touch loop:
#   esi pages of the hot tenth   ebp pages   ebx random state   edi TSC deadline of the next touch
.code32
.set MB_MAGIC, 0x1BADB002
.set MB_FLAGS, 0x00000002          # we need the memory fields of the info block
.set DEBUGCON, 0xe9
.set FIRST_PAGE, 0x200000
.set STACK_TOP, 0x90000          # conventional memory, below the kernel and the pages

.text
.globl _start
_start:
  jmp entry
.align 4                           # the header, within the first 8 KiB of the file
.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
entry:
  cli
  # mem_upper (KiB above 1 MiB) from the multiboot info block at ebx.
  mov 8(%ebx), %eax
  shl $10, %eax
  add $0x100000, %eax              # eax = end of memory
  sub $FIRST_PAGE, %eax
  shr $12, %eax
  mov %eax, %ebp                   # ebp = pages from FIRST_PAGE on
  xor %edx, %edx
  mov $10, %ecx
  div %ecx
  inc %eax
  mov %eax, %esi                   # esi = pages of the hot tenth
  mov $STACK_TOP, %esp

  # Fill: the first word of every page with the page's number (never zero). A page with one
  # non-zero word is a full 4 KiB page to QEMU's migration (only all-zero pages are sent
  # short), and one store per page keeps the fill of a GiB to a second under TCG.
  mov $FIRST_PAGE, %edi
  xor %edx, %edx
1:
  inc %edx
  mov %edx, (%edi)
  add $4096, %edi
  cmp %ebp, %edx
  jb 1b

  mov $'R', %al
  out %al, $DEBUGCON
  mov $'\n', %al
  out %al, $DEBUGCON

  push $0                          # (%esp): touches so far
  mov $0x12345678, %ebx
  rdtsc
  mov %eax, %edi

touch:
  # Wait for this touch's slot; a touch late by more than a period starts a new schedule.
2:
  rdtsc
  mov %eax, %ecx
  sub %edi, %ecx
  js 2b
  cmp $PERIOD_TICKS, %ecx
  jb 3f
  mov %eax, %edi
3:
  add $PERIOD_TICKS, %edi

  # Pick the page from the high bits of a 32-bit LCG: edx = page index.
  imul $1664525, %ebx, %ebx
  add $1013904223, %ebx
  mov %ebx, %eax
  mov %ebp, %ecx
.if PATTERN == 1
  imul $1664525, %ebx, %ebx        # a second draw: one touch in ten anywhere,
  add $1013904223, %ebx
  cmp $0x19999999, %ebx
  jb 4f
  mov %esi, %ecx                   # nine in the hot tenth
4:
.endif
  mul %ecx                         # edx = eax * pages >> 32
  shl $12, %edx
  lea FIRST_PAGE(%edx), %ecx

  # The timed touch: a write to the page (the word after its first).
  rdtsc
  push %eax
  incl 4(%ecx)
  rdtsc
  sub (%esp), %eax
  add $4, %esp
  cmp $STALL_TICKS, %eax
  jae stall
  incl (%esp)                      # "T" every 4096 touches: the guest's progress
  testl $0xfff, (%esp)
  jnz touch
  mov $'T', %al
  out %al, $DEBUGCON
  mov $'\n', %al
  out %al, $DEBUGCON
  jmp touch

stall:
  # A stall: "S" and its ticks in hex, then a newline.
  mov %eax, %edx
  mov $'S', %al
  out %al, $DEBUGCON
  mov $8, %ecx
5:
  rol $4, %edx
  mov %edx, %eax
  and $15, %eax
  add $'0', %al
  cmp $'9', %al
  jbe 6f
  add $('a' - '0' - 10), %al
6:
  out %al, $DEBUGCON
  dec %ecx
  jnz 5b
  mov $'\n', %al
  out %al, $DEBUGCON
  jmp touch
