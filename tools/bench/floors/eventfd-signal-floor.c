/*
 * What the ring's eventfd signal costs per completion, without Node or miniss: page-cached reads
 * with one IORING_OP_READ per io_uring_enter (queue depth 1, every read completes inline, rings
 * set up like the backend's: SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG), in four variants, passes
 * interleaved with a pread(2) loop:
 *   - no eventfd registered;
 *   - an eventfd registered (IORING_REGISTER_EVENTFD) that nothing polls;
 *   - an eventfd registered and watched by an epoll instance, as the backend's is by libuv;
 *   - the same with IORING_CQ_EVENTFD_DISABLED set in the CQ ring's flags, as the backend does
 *     while its ready-callback rounds run.
 *
 *   cc -O2 -o /tmp/eventfd-signal-floor tools/bench/floors/eventfd-signal-floor.c
 *   dd if=/dev/urandom of=/tmp/seq-floor.bin bs=1M count=64
 *   taskset -c 1 /tmp/eventfd-signal-floor /tmp/seq-floor.bin 4096
 *
 * The second argument is the block size in bytes (a multiple of 4096, default 4096).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "floor_ring.h"

#define ROUNDS 40
#define VARIANTS 4

/* A ring of the backend's flags, and how many of its reads did not complete inline. */
struct ring {
  struct floor_ring r;
  long waited;
};

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void ring_init(struct ring *x, int event_fd, int quiet) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  struct floor_ring *r = &x->r;
  if (floor_ring_init(r, 8, &p) != 0) die("io_uring_setup");
  if (event_fd >= 0 && syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_EVENTFD, &event_fd, 1) < 0) {
    die("IORING_REGISTER_EVENTFD");
  }
  if (quiet) __atomic_store_n(r->cq_flags, *r->cq_flags | IORING_CQ_EVENTFD_DISABLED, __ATOMIC_RELEASE);
}

/* One read, submitted and (inline) completed by one io_uring_enter, its CQE reaped. */
static void ring_read(struct ring *x, int fd, char *buf, size_t bs, size_t off) {
  struct floor_ring *r = &x->r;
  unsigned tail = *r->sq_tail, idx = tail & r->sq_mask;
  struct io_uring_sqe *s = &r->sqes[idx];
  memset(s, 0, sizeof *s);
  s->opcode = IORING_OP_READ;
  s->fd = fd;
  s->addr = (uintptr_t)buf;
  s->len = (unsigned)bs;
  s->off = off;
  r->sq_array[idx] = idx;
  __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
  if (syscall(__NR_io_uring_enter, r->fd, 1, 0, 0, NULL, 0) < 0) die("io_uring_enter");
  unsigned head = *r->cq_head;
  /* Rarely (a page under readahead) the read goes async: wait for it. */
  while (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
    x->waited++;
    if (syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) die("io_uring_enter");
  }
  if (r->cqes[head & r->cq_mask].res != (int)bs) {
    fprintf(stderr, "read: %d\n", r->cqes[head & r->cq_mask].res);
    exit(1);
  }
  __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <page-cached file> [block size in bytes]\n", argv[0]);
    return 2;
  }
  const long bs_arg = argc > 2 ? strtol(argv[2], NULL, 10) : 4096;
  if (bs_arg < 4096 || bs_arg > (64L << 20) || bs_arg % 4096 != 0) {
    fprintf(stderr, "block size must be a multiple of 4096 between 4096 and 64 MiB\n");
    return 2;
  }
  const size_t bs = (size_t)bs_arg;
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (off_t)bs) die(argv[1]);
  const size_t size = (size_t)st.st_size / bs * bs;
  char *buf = aligned_alloc(4096, bs);
  if (buf == NULL) die("aligned_alloc");
  for (size_t off = 0; off < size; off += bs) {
    if (pread(fd, buf, bs, off) != (ssize_t)bs) die("pread"); /* into the page cache */
  }

  int unpolled = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int polled = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int polled_quiet = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (unpolled < 0 || polled < 0 || polled_quiet < 0 || ep < 0) die("eventfd/epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN};
  ev.data.fd = polled;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, polled, &ev) != 0) die("epoll_ctl");
  ev.data.fd = polled_quiet;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, polled_quiet, &ev) != 0) die("epoll_ctl");

  static const char *names[VARIANTS + 1] = {"pread", "ring, no eventfd", "ring, eventfd",
                                            "ring, eventfd in epoll", "ring, eventfd in epoll, DISABLED"};
  struct ring rings[VARIANTS];
  memset(rings, 0, sizeof rings);
  ring_init(&rings[0], -1, 0);
  ring_init(&rings[1], unpolled, 0);
  ring_init(&rings[2], polled, 0);
  ring_init(&rings[3], polled_quiet, 1);

  double total_us[VARIANTS + 1] = {0};
  for (int round = 0; round < ROUNDS; round++) {
    double t = now_us();
    for (size_t off = 0; off < size; off += bs) {
      if (pread(fd, buf, bs, off) != (ssize_t)bs) die("pread");
    }
    total_us[0] += now_us() - t;
    for (int v = 0; v < VARIANTS; v++) {
      t = now_us();
      for (size_t off = 0; off < size; off += bs) ring_read(&rings[v], fd, buf, bs, off);
      total_us[v + 1] += now_us() - t;
    }
    uint64_t count;
    /* Reset the counters between rounds, as the loop's reads of a readable eventfd would. */
    if (read(unpolled, &count, sizeof count) < 0 || read(polled, &count, sizeof count) < 0) die("read eventfd");
  }
  const double reads = (double)ROUNDS * (double)(size / bs);
  for (int v = 0; v <= VARIANTS; v++) {
    printf("%-34s %.3f us per %zu-byte read", names[v], total_us[v] / reads, bs);
    if (v > 0 && rings[v - 1].waited > 0) printf(" (%ld of them not inline)", rings[v - 1].waited);
    printf("\n");
  }
  return 0;
}
