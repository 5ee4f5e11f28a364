#!/bin/sh
# Rebuild the firmware-input fixtures with the GNU Arm toolchain
# (Debian: apt-get install binutils-arm-none-eabi). The tests use the committed
# outputs; they do not need the toolchain.
set -eu
cd "$(dirname "$0")"
arm-none-eabi-as -o app.o app.S
arm-none-eabi-ld -T app.ld -o app.elf app.o
arm-none-eabi-objcopy -O ihex app.elf app.hex
arm-none-eabi-objcopy -O srec app.elf app.srec
arm-none-eabi-objcopy -O binary --gap-fill 0xff app.elf app.bin
rm -f app.o
