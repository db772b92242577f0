# The flat binary of guest_program.S (objcopy -O binary), embedded read-only in the test VM.
  .section .rodata
  .balign 16
  .globl lazymig_guest_program_start
lazymig_guest_program_start:
  .incbin "guest_program.bin"
  .globl lazymig_guest_program_end
lazymig_guest_program_end:
  .section .note.GNU-stack,"",@progbits
