#!/bin/sh
# Rebuild the two benchmark firmware releases (needs Debian's gcc-arm-none-eabi and
# libnewlib-arm-none-eabi). 1.0.1 is a patch release of 1.0.0: a corrected
# balancing threshold and over-voltage limit, nothing else.
set -eu
cd "$(dirname "$0")"
CFLAGS="-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os -g0 -ffunction-sections -fdata-sections -Wall -Wextra -ffile-prefix-map=$PWD=."
build() {
  version=$1 ov=$2 delta=$3
  major=$(echo "$version" | cut -d. -f1) minor=$(echo "$version" | cut -d. -f2) patch=$(echo "$version" | cut -d. -f3)
  mkdir -p build
  cat > build/version.h <<H
#define FW_VERSION_STRING "$version"
#define FW_MAJOR $major
#define FW_MINOR $minor
#define FW_PATCH $patch
#define OV_LIMIT_V ${ov}f
#define UV_LIMIT_V 2.80f
#define BALANCE_DELTA_V ${delta}f
H
  arm-none-eabi-gcc $CFLAGS -Ibuild -specs=nano.specs -u _printf_float -Tsrc/link.ld -nostartfiles \
    -Wl,--gc-sections -Wl,--build-id=none -o "build/bms-fw-$version.elf" src/startup.c src/bms.c -lm
  arm-none-eabi-objcopy -O binary "build/bms-fw-$version.elf" "bms-fw-$version.bin"
}
build 1.0.0 3.65 0.030
build 1.0.1 3.60 0.015
arm-none-eabi-gcc --version | head -1 > TOOLCHAIN.txt
sha256sum bms-fw-1.0.0.bin bms-fw-1.0.1.bin | tee SHA256SUMS
