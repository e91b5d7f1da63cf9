/*
 * <sys/event.h> of kqemu, the TEST-ONLY kqueue emulation in this directory (see kqemu.c). It is
 * the shim declarations (test/shim/sys/event.h: FreeBSD's struct kevent and constants) plus one
 * hook: close() on a kqueue fd must release the emulation's state, as closing a real kqueue
 * does, so files that include this header call kqemu_close() for close(). Used only when the
 * addon is built on Linux with MINISS_KQUEUE_INCLUDE_DIR pointing here.
 */
#ifndef MINISS_KQEMU_SYS_EVENT_H_
#define MINISS_KQEMU_SYS_EVENT_H_

#include "../../../shim/sys/event.h"
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif
/* close(2) that also drops the knotes of fd (and the whole queue when fd is a kqueue). */
int kqemu_close(int fd);
#ifdef __cplusplus
}
#endif

#define close(fd) kqemu_close(fd)

#endif
