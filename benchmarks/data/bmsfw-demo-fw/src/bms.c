/* A small BMS application: cell monitoring, balancing, SoC estimation, protections,
 * Modbus RTU register map and a CAN status frame. Realistic code size and structure
 * for the transfer-size benchmark; it is not meant to run a real pack. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "version.h"

#define CELLS 16
#define NTCS 4

typedef struct {
    float cell_v[CELLS];
    float temp_c[NTCS];
    float current_a;
    float soc_pct;
    float capacity_ah;
    uint32_t faults;
    uint16_t balance_mask;
} pack_t;

static pack_t pack = { .capacity_ah = 280.0f, .soc_pct = 50.0f };
static volatile uint32_t ticks;
static uint16_t holding[128];

static const float ocv_table[11] = {
    3.000f, 3.180f, 3.240f, 3.270f, 3.290f, 3.300f, 3.310f, 3.330f, 3.340f, 3.360f, 3.450f,
};

enum { F_OV = 1, F_UV = 2, F_OT = 4, F_UT = 8, F_OC = 16, F_NTC = 32 };

static float ocv_to_soc(float v) {
    if (v <= ocv_table[0]) return 0.0f;
    for (int i = 1; i < 11; i++) {
        if (v < ocv_table[i]) {
            float f = (v - ocv_table[i - 1]) / (ocv_table[i] - ocv_table[i - 1]);
            return 10.0f * ((float)(i - 1) + f);
        }
    }
    return 100.0f;
}

static float ntc_to_c(uint16_t adc) {
    /* Beta equation, 10k NTC, beta 3950, 10k pull-up, 12-bit ADC. */
    if (adc == 0 || adc >= 4095) return NAN;
    float r = 10000.0f * (float)adc / (4095.0f - (float)adc);
    return 1.0f / (logf(r / 10000.0f) / 3950.0f + 1.0f / 298.15f) - 273.15f;
}

static uint16_t crc16_modbus(const uint8_t *p, unsigned n) {
    uint16_t crc = 0xFFFF;
    while (n--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++) crc = (crc & 1) ? (crc >> 1) ^ 0xA001 : crc >> 1;
    }
    return crc;
}

static void protections(void) {
    uint32_t f = 0;
    for (int i = 0; i < CELLS; i++) {
        if (pack.cell_v[i] > OV_LIMIT_V) f |= F_OV;
        if (pack.cell_v[i] < UV_LIMIT_V) f |= F_UV;
    }
    for (int i = 0; i < NTCS; i++) {
        if (isnan(pack.temp_c[i])) f |= F_NTC;
        else if (pack.temp_c[i] > 55.0f) f |= F_OT;
        else if (pack.temp_c[i] < -10.0f) f |= F_UT;
    }
    if (fabsf(pack.current_a) > 200.0f) f |= F_OC;
    pack.faults = f;
}

static void balancing(void) {
    float vmin = pack.cell_v[0];
    for (int i = 1; i < CELLS; i++) vmin = fminf(vmin, pack.cell_v[i]);
    uint16_t mask = 0;
    for (int i = 0; i < CELLS; i++)
        if (pack.cell_v[i] - vmin > BALANCE_DELTA_V && pack.cell_v[i] > 3.35f) mask |= 1u << i;
    pack.balance_mask = mask;
}

static void soc_update(float dt_s) {
    /* Coulomb counting, corrected towards the OCV estimate at rest. */
    pack.soc_pct -= pack.current_a * dt_s / (pack.capacity_ah * 36.0f);
    if (fabsf(pack.current_a) < 0.5f) {
        float avg = 0;
        for (int i = 0; i < CELLS; i++) avg += pack.cell_v[i];
        float ocv = ocv_to_soc(avg / CELLS);
        pack.soc_pct += (ocv - pack.soc_pct) * 0.001f;
    }
    if (pack.soc_pct < 0) pack.soc_pct = 0;
    if (pack.soc_pct > 100) pack.soc_pct = 100;
}

static void modbus_map(void) {
    for (int i = 0; i < CELLS; i++) holding[i] = (uint16_t)lrintf(pack.cell_v[i] * 1000.0f);
    for (int i = 0; i < NTCS; i++) holding[32 + i] = (uint16_t)lrintf((pack.temp_c[i] + 40.0f) * 10.0f);
    holding[40] = (uint16_t)lrintf(pack.soc_pct * 10.0f);
    holding[41] = (uint16_t)(int16_t)lrintf(pack.current_a * 10.0f);
    holding[42] = (uint16_t)pack.faults;
    holding[43] = pack.balance_mask;
    holding[100] = FW_MAJOR;
    holding[101] = FW_MINOR;
    holding[102] = FW_PATCH;
}

int modbus_frame(uint8_t *out, uint8_t unit, uint16_t reg, uint16_t count) {
    if (count > 60 || reg + count > 128) return -1;
    out[0] = unit;
    out[1] = 0x03;
    out[2] = (uint8_t)(count * 2);
    for (int i = 0; i < count; i++) {
        out[3 + 2 * i] = (uint8_t)(holding[reg + i] >> 8);
        out[4 + 2 * i] = (uint8_t)holding[reg + i];
    }
    uint16_t crc = crc16_modbus(out, 3u + 2u * count);
    out[3 + 2 * count] = (uint8_t)crc;
    out[4 + 2 * count] = (uint8_t)(crc >> 8);
    return 5 + 2 * count;
}

void can_status(uint8_t data[8]) {
    uint16_t pv = 0;
    for (int i = 0; i < CELLS; i++) pv += holding[i] / 10;
    data[0] = (uint8_t)pv; data[1] = (uint8_t)(pv >> 8);
    data[2] = (uint8_t)holding[40]; data[3] = (uint8_t)(holding[40] >> 8);
    data[4] = (uint8_t)pack.faults; data[5] = (uint8_t)(pack.balance_mask >> 8);
    data[6] = (uint8_t)pack.balance_mask; data[7] = (uint8_t)ticks;
}

static void report(void) {
    printf("BMS %s soc=%.1f%% I=%.2fA faults=0x%02lx bal=0x%04x\n", FW_VERSION_STRING,
           (double)pack.soc_pct, (double)pack.current_a, (unsigned long)pack.faults,
           pack.balance_mask);
    for (int i = 0; i < CELLS; i++) printf(" c%02d=%.3f", i, (double)pack.cell_v[i]);
    printf("\n");
}

int main(void) {
    static const uint16_t adc_ntc[NTCS] = { 2048, 2100, 1990, 2010 };
    for (int i = 0; i < CELLS; i++) pack.cell_v[i] = 3.30f + 0.001f * (float)i;
    for (;;) {
        for (int i = 0; i < NTCS; i++) pack.temp_c[i] = ntc_to_c(adc_ntc[i]);
        protections();
        balancing();
        soc_update(0.1f);
        modbus_map();
        if (++ticks % 100 == 0) report();
    }
}
