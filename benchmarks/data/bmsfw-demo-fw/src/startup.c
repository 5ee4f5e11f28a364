/* Minimal Cortex-M4 vector table and reset handler (no vendor HAL). */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void Default_Handler(void) { for (;;) { } }
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));
void CAN1_RX0_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));
void USART2_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));

__attribute__((section(".isr_vector"), used))
void (*const vectors[])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, SysTick_Handler,
    [16 + 20] = CAN1_RX0_IRQHandler, [16 + 38] = USART2_IRQHandler,
};

void Reset_Handler(void) {
    memcpy(&_sdata, &_sidata, (uint32_t)((char *)&_edata - (char *)&_sdata));
    memset(&_sbss, 0, (uint32_t)((char *)&_ebss - (char *)&_sbss));
    main();
    for (;;) { }
}

/* newlib syscalls: output goes to a ring buffer the debugger can read. */
char trace_buf[512];
unsigned trace_pos;
int _write(int fd, const char *p, int n) {
    (void)fd;
    for (int i = 0; i < n; i++) trace_buf[trace_pos++ % sizeof trace_buf] = p[i];
    return n;
}
void *_sbrk(int incr) {
    extern char _end;
    static char *heap = &_end;
    char *prev = heap;
    heap += incr;
    return prev;
}
int _close(int fd) { (void)fd; return -1; }
int _lseek(int fd, int p, int w) { (void)fd; (void)p; (void)w; return 0; }
int _read(int fd, char *p, int n) { (void)fd; (void)p; (void)n; return 0; }
int _fstat(int fd, void *st) { (void)fd; (void)st; return 0; }
int _isatty(int fd) { (void)fd; return 1; }
void _exit(int code) { (void)code; for (;;) { } }
int _kill(int pid, int sig) { (void)pid; (void)sig; return -1; }
int _getpid(void) { return 1; }
