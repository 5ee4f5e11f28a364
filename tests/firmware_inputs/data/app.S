/* A minimal Cortex-M "BMS app" used as a firmware input fixture (see build.sh).
   Vector table and code in flash, initialised data linked to RAM but loaded
   from flash, zero-initialised data, and a calibration block at a fixed flash
   address after a gap. */
    .syntax unified
    .cpu cortex-m4
    .thumb

    .section .isr_vector, "a"
    .word _estack
    .word reset_handler + 1
    .fill 14, 4, 0

    .text
    .thumb_func
    .global reset_handler
reset_handler:
    ldr r0, =_sidata
    ldr r1, =_sdata
    ldr r2, =_edata
copy:
    cmp r1, r2
    bcs done
    ldr r3, [r0], #4
    str r3, [r1], #4
    b copy
done:
    b done

    .section .rodata
    .asciz "bms app firmware-input fixture"
    .balign 4
    .fill 600, 4, 0xa5c3e10f

    .data
    .word 0x11223344, 0x55667788
    .ascii "initialised data, copied from flash"
    .balign 4

    .bss
    .space 256

    .section .calib, "a"
    .ascii "CALIB-BLOCK"
    .balign 4
    .word 0xcafebabe
