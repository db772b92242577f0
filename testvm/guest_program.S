# The test VM's guest program: one copy runs on every KVM vCPU, in 64-bit long mode with
# identity-mapped guest physical memory. It walks guest memory by the chosen access pattern,
# checks the pattern word of every page it reads, stamps the pages the pattern writes, and
# talks to the VMM only by port I/O (see testvm/guest_abi.h, whose constants these mirror).
#
# Every instruction costs about a microsecond under the paravirtual KVM this project is
# developed on, so the program keeps its state in registers, touches one word per read and
# leaves the full check of every page to the VMM. No stack is used (calls would be memory
# accesses too).
#
# Registers for the whole run:
#   r15 parameter block        r14 access index i     r13 random state    r12 stamp generation
#   r11 accesses until the next progress report       r10 accesses        r9 guest memory base
#   r8  pages                  rbx the page of this access                 rbp TSC at its start
.intel_syntax noprefix
.code64

.set P_MEM_BASE, 0
.set P_PAGES, 8
.set P_PATTERN, 16
.set P_ACCESSES, 24
.set P_VCPU, 32
.set P_VCPUS, 40
.set P_SEED, 48
.set P_ZERO_THRESHOLD, 56
.set P_SLICE_START, 64
.set P_SLICE_LEN, 72
.set P_HOT_START, 80
.set P_HOT_COUNT, 88
.set P_READ_LIMIT, 96
.set P_WRITE_LIMIT, 104
.set P_BITMAP, 112
.set P_LATENCY_LOG, 120
.set P_RANDOM_STATE, 128
.set P_PROGRESS_EVERY, 136
.set P_SEED_TIMES_31, 144
.set P_SELECT, 152

.set PORT_PROGRESS, 0x10
.set PORT_MISMATCH, 0x11
.set PORT_USERFAULT, 0x12
.set PORT_STAMP, 0x13
.set PORT_DONE, 0x14

.set GOLDEN, 0x9e3779b97f4a7c15
.set MIX1, 0xbf58476d1ce4e5b9
.set MIX2, 0x94d049bb133111eb

# The first two rounds of mix64's finaliser, which the pattern's words share with it:
# rax = (rax ^ rax >> 30) * MIX1; rax ^= rax >> 27. Clobbers rdx.
.macro MIX_ROUNDS
  mov rdx, rax
  shr rdx, 30
  xor rax, rdx
  movabs rdx, MIX1
  imul rax, rdx
  mov rdx, rax
  shr rdx, 27
  xor rax, rdx
.endm

# rax = mix64(rax) (testvm/pattern.cc); clobbers rdx.
.macro MIX64
  movabs rdx, GOLDEN
  add rax, rdx
  MIX_ROUNDS
  movabs rdx, MIX2
  imul rax, rdx
  mov rdx, rax
  shr rdx, 31
  xor rax, rdx
.endm

# rax = the next random number (a 64-bit LCG, high bits); clobbers nothing else.
.macro NEXT_RANDOM
  movabs rax, 6364136223846793005
  imul r13, rax
  add r13, 1442695
  mov rax, r13
  shr rax, 17
.endm

# \reg = the TSC; clobbers rax, rdx.
.macro TSC reg
  lfence
  rdtsc
  shl rdx, 32
  or rax, rdx
  mov \reg, rax
.endm

# Before touching page rbx: if its userfault bit is set, exit to the VMM, which asks the
# handler for the page and resumes this vCPU once the bit is clear -- the step KVM's userfault
# exit (KVM_MEM_USERFAULT) does on a kernel that has it. Clobbers rax, rdx.
.macro USERFAULT_EXIT
  mov rax, [r15 + P_BITMAP]
  test rax, rax
  jz 91f
  mov rdx, rbx
  shr rdx, 6
  mov rax, [rax + rdx * 8]
  bt rax, rbx
  jnc 91f
  mov eax, ebx
  out PORT_USERFAULT, eax
91:
.endm

# Stores the TSC ticks since rbp as access i's latency. Clobbers rax, rdx.
.macro LOG_LATENCY
  TSC rax
  sub rax, rbp
  mov rdx, [r15 + P_LATENCY_LOG]
  mov [rdx + r14 * 8], rax
.endm

entry:
  mov r15, rdi
  mov r8, [r15 + P_PAGES]
  mov r9, [r15 + P_MEM_BASE]
  mov r10, [r15 + P_ACCESSES]
  mov r11, [r15 + P_PROGRESS_EVERY]
  mov r13, [r15 + P_RANDOM_STATE]
  xor r14, r14
  xor r12, r12
  # The pattern picks its page-selection routine once; each access jumps to it.
  mov rax, [r15 + P_PATTERN]
  lea rcx, [rip + select_table]
  movsxd rax, dword ptr [rcx + rax * 4]
  add rax, rcx
  mov [r15 + P_SELECT], rax
  test r10, r10
  jz done

access:
  jmp qword ptr [r15 + P_SELECT]

# rbx = the parameters' start + rax % their length, then on to the read. Clobbers rdx.
.macro READ_IN_RANGE start, len
  xor edx, edx
  div qword ptr [r15 + \len]
  mov rbx, [r15 + \start]
  add rbx, rdx
  jmp read
.endm

select_sequential:
  mov rax, r14
  READ_IN_RANGE P_SLICE_START, P_SLICE_LEN

select_random:
  NEXT_RANDOM
  xor edx, edx
  div r8
  mov rbx, rdx
  jmp read

select_hot:
  # Nine accesses in ten go to the hot tenth of memory, the rest anywhere.
  NEXT_RANDOM
  xor edx, edx
  mov ecx, 10
  div rcx
  test rdx, rdx
  jz select_random
  NEXT_RANDOM
  READ_IN_RANGE P_HOT_START, P_HOT_COUNT

select_write:
  NEXT_RANDOM
  xor edx, edx
  div r8
  mov rbx, rdx
  test r14, 1
  jz read
  # Every other access writes, and only to this vCPU's own pages (page % vcpus == vcpu), so
  # the last stamp of every page is well defined for the VMM's check.
  mov rax, rbx
  xor edx, edx
  div qword ptr [r15 + P_VCPUS]
  sub rbx, rdx
  add rbx, [r15 + P_VCPU]
  cmp rbx, [r15 + P_WRITE_LIMIT]
  jb write
  mov rbx, [r15 + P_VCPU]
  cmp rbx, [r15 + P_WRITE_LIMIT]
  jb write
  jmp read

read:
  # Pages at or past the read limit were given to the balloon: the guest leaves them alone.
  cmp rbx, [r15 + P_READ_LIMIT]
  jb 1f
  mov rax, rbx
  xor edx, edx
  div qword ptr [r15 + P_READ_LIMIT]
  mov rbx, rdx
1:
  TSC rbp
  USERFAULT_EXIT
  mov rsi, rbx
  shl rsi, 12
  mov rsi, [r9 + rsi + 4088]
  LOG_LATENCY
  # The page's last word (never under a stamp): zero on a zero page, else word 511 of the
  # pattern's stream for this page.
  mov rax, rbx
  MIX64
  xor rax, [r15 + P_SEED]
  MIX64
  xor edx, edx
  mov ecx, 1000000
  div rcx
  cmp rdx, [r15 + P_ZERO_THRESHOLD]
  jb zero_page
  mov rax, [r15 + P_SEED_TIMES_31]
  add rax, rbx
  MIX64
  movabs rdx, GOLDEN * 512
  add rax, rdx
  MIX_ROUNDS
  or rax, 1
  cmp rax, rsi
  je next
  jmp mismatch
zero_page:
  test rsi, rsi
  jz next
mismatch:
  mov eax, ebx
  out PORT_MISMATCH, eax
  jmp next

write:
  # The stamp of testvm/pattern.cc: s = mix64(page * 1000003 + generation), then 8 words
  # s = mix64(s) at Stamp::offsetIn(page). The first word is computed before the clock starts,
  # so the latency is the first store's.
  inc r12
  imul rax, rbx, 104
  xor edx, edx
  mov ecx, 4032
  div rcx
  and rdx, -8
  mov rsi, rbx
  shl rsi, 12
  add rsi, r9
  add rsi, rdx
  imul rax, rbx, 1000003
  add rax, r12
  MIX64
  MIX64
  mov rcx, rax
  TSC rbp
  USERFAULT_EXIT
  mov [rsi], rcx
  LOG_LATENCY
  mov rdi, 7
2:
  add rsi, 8
  mov rax, rcx
  MIX64
  mov rcx, rax
  mov [rsi], rcx
  dec rdi
  jnz 2b
  mov eax, ebx
  out PORT_STAMP, eax

next:
  inc r14
  dec r11
  jnz 3f
  mov r11, [r15 + P_PROGRESS_EVERY]
  mov eax, r14d
  out PORT_PROGRESS, eax
3:
  cmp r14, r10
  jb access

done:
  mov eax, r14d
  out PORT_DONE, eax
halt:
  hlt
  jmp halt

.balign 4
select_table:
  .long select_sequential - select_table
  .long select_random - select_table
  .long select_hot - select_table
  .long select_write - select_table
