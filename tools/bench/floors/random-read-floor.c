/*
 * The kernel's own ceiling for the io bench's random reads, without Node or miniss: 4 KiB reads at
 * random page offsets of a page-cached file, 64 in flight, all 64 submitted and reaped with one
 * io_uring_enter per batch (a ring set up like the backend's: SINGLE_ISSUER|COOP_TASKRUN), in four
 * variants run in turns:
 *   - plain: IORING_OP_READ on the file's fd (what the backend submits);
 *   - fixed file: the fd registered (IORING_REGISTER_FILES) and used with IOSQE_FIXED_FILE;
 *   - fixed buffer: the 64 buffers registered (IORING_REGISTER_BUFFERS), IORING_OP_READ_FIXED;
 *   - both.
 * Shows how many reads a second one core can do here at all, and what registering files or
 * buffers would save per read.
 *
 *   cc -O2 -o /tmp/random-read-floor tools/bench/floors/random-read-floor.c
 *   dd if=/dev/urandom of=/tmp/rand-floor.bin bs=1M count=1024
 *   taskset -c 1 /tmp/random-read-floor /tmp/rand-floor.bin
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "floor_ring.h"

#define DEPTH 64
#define ROUNDS 5
#define PASS_S 0.4
#define VARIANTS 4

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static uint32_t rnd_state = 2463534242u;
static uint32_t rnd(void) {
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 17;
  rnd_state ^= rnd_state << 5;
  return rnd_state;
}

/* One timed pass of variant v on ring r: reads done, into *secs. */
static long pass(struct floor_ring *r, int v, int fd, char *bufs, uint32_t pages, double *secs) {
  const int fixed_file = v & 1, fixed_buf = v & 2;
  unsigned free_slots[DEPTH];
  int nfree = DEPTH, inflight = 0;
  for (int i = 0; i < DEPTH; i++) free_slots[i] = (unsigned)i;
  long done = 0;
  const double t0 = now_s(), end = t0 + PASS_S;
  int stopping = 0;
  for (;;) {
    unsigned tail = *r->sq_tail, n = 0;
    while (!stopping && nfree > 0) {
      const unsigned slot = free_slots[--nfree], idx = (tail + n) & r->sq_mask;
      struct io_uring_sqe *s = &r->sqes[idx];
      memset(s, 0, sizeof *s);
      s->opcode = fixed_buf ? IORING_OP_READ_FIXED : IORING_OP_READ;
      s->fd = fixed_file ? 0 : fd;
      s->flags = fixed_file ? IOSQE_FIXED_FILE : 0;
      s->addr = (uintptr_t)(bufs + (size_t)slot * 4096);
      s->len = 4096;
      s->off = (uint64_t)(rnd() % pages) * 4096;
      s->buf_index = 0;
      s->user_data = slot;
      r->sq_array[idx] = idx;
      n++;
    }
    if (n == 0 && inflight == 0) break;
    __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
    inflight += (int)n;
    if (syscall(__NR_io_uring_enter, r->fd, n, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
      perror("io_uring_enter");
      exit(1);
    }
    unsigned head = *r->cq_head;
    const unsigned ctail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != ctail; head++) {
      const struct io_uring_cqe *c = &r->cqes[head & r->cq_mask];
      if (c->res != 4096) {
        fprintf(stderr, "read returned %d\n", c->res);
        exit(1);
      }
      free_slots[nfree++] = (unsigned)c->user_data;
      inflight--;
      done++;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    if (!stopping && now_s() >= end) stopping = 1;
  }
  *secs = now_s() - t0;
  return done;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <page-cached file of at least 1 MiB>\n", argv[0]);
    return 2;
  }
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (1 << 20)) {
    perror(argv[1]);
    return 1;
  }
  const uint32_t pages = (uint32_t)(st.st_size / 4096);
  char *bufs = aligned_alloc(4096, DEPTH * 4096);
  memset(bufs, 0, DEPTH * 4096);
  char *all = malloc(1 << 20);
  for (off_t off = 0; off < st.st_size; off += 1 << 20) pread(fd, all, 1 << 20, off); /* into the page cache */
  free(all);

  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  struct floor_ring ring;
  if (floor_ring_init(&ring, 2 * DEPTH, &p) != 0) {
    perror("io_uring_setup");
    return 1;
  }
  struct iovec iov = {bufs, DEPTH * 4096};
  if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_FILES, &fd, 1) < 0 ||
      syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0) {
    perror("io_uring_register");
    return 1;
  }
  static const char *names[VARIANTS] = {"plain READ", "fixed file", "fixed buffer", "fixed file+buffer"};
  long ops[VARIANTS] = {0};
  double secs[VARIANTS] = {0};
  for (int round = 0; round < ROUNDS; round++) {
    for (int k = 0; k < VARIANTS; k++) {
      const int v = round % 2 ? VARIANTS - 1 - k : k; /* take turns going first */
      double s;
      ops[v] += pass(&ring, v, fd, bufs, pages, &s);
      secs[v] += s;
    }
  }
  printf("random 4 KiB reads, %d in flight, %u pages, one core:\n", DEPTH, pages);
  for (int v = 0; v < VARIANTS; v++) {
    printf("  %-18s %7.0fk IOPS  %.3f us/read  (%.3fx plain)\n", names[v], ops[v] / secs[v] / 1e3, secs[v] * 1e6 / ops[v],
           (ops[v] / secs[v]) / (ops[0] / secs[0]));
  }
  return 0;
}
