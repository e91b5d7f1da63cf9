/*
 * The kernel's own cost of a sequential 1 MiB io_uring read, without Node or miniss: the same
 * page-cached file read with a pread(2) loop and with one IORING_OP_READ per io_uring_enter
 * (queue depth 1, SINGLE_ISSUER|COOP_TASKRUN as the backend uses), passes interleaved, plus a
 * third variant with the buffer registered (IORING_OP_READ_FIXED); the two io_uring passes take
 * turns going first. Shows how close to the sync
 * loop any io_uring read can get here, before JavaScript adds its part.
 *
 *   cc -O2 -o /tmp/seq-read-floor tools/bench/floors/seq-read-floor.c
 *   dd if=/dev/urandom of=/tmp/seq-floor.bin bs=1M count=256 && /tmp/seq-read-floor /tmp/seq-floor.bin
 *
 * An optional second argument is the block size in bytes (a multiple of 4096, default 1 MiB):
 * at small blocks the difference per read is the ring's own cost per operation.
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

#define MIB (1u << 20)
#define ROUNDS 8

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <page-cached file of at least 1 MiB> [block size in bytes]\n", argv[0]);
    return 2;
  }
  const long bs_arg = argc > 2 ? strtol(argv[2], NULL, 10) : (long)MIB;
  if (bs_arg < 4096 || bs_arg > 64L * MIB || bs_arg % 4096 != 0) {
    fprintf(stderr, "block size must be a multiple of 4096 between 4096 and 64 MiB\n");
    return 2;
  }
  const size_t bs = (size_t)bs_arg;
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (off_t)bs) {
    perror(argv[1]);
    return 1;
  }
  const size_t size = (size_t)st.st_size / bs * bs;
  char *buf = aligned_alloc(4096, bs);
  memset(buf, 0, bs);
  for (size_t off = 0; off < size; off += bs) pread(fd, buf, bs, off); /* into the page cache */

  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  struct floor_ring ring;
  if (floor_ring_init(&ring, 8, &p) != 0) {
    perror("io_uring_setup");
    return 1;
  }
  struct iovec iov = {buf, bs};
  if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0) {
    perror("IORING_REGISTER_BUFFERS");
    return 1;
  }

  double sync_ms = 0, read_ms = 0, fixed_ms = 0;
  for (int r = 0; r < ROUNDS; r++) {
    double t = now_ms();
    for (size_t off = 0; off < size; off += bs) {
      if (pread(fd, buf, bs, off) != (ssize_t)bs) abort();
    }
    sync_ms += now_ms() - t;
    /* READ and READ_FIXED take turns going first after the pread pass. */
    for (int k = 0; k <= 1; k++) {
      const int fixed = (r & 1) ? 1 - k : k;
      t = now_ms();
      for (size_t off = 0; off < size; off += bs) {
        unsigned tail = *ring.sq_tail, idx = tail & ring.sq_mask;
        struct io_uring_sqe *s = &ring.sqes[idx];
        memset(s, 0, sizeof *s);
        s->opcode = fixed ? IORING_OP_READ_FIXED : IORING_OP_READ;
        s->fd = fd;
        s->addr = (uintptr_t)buf;
        s->len = (unsigned)bs;
        s->off = off;
        s->buf_index = 0;
        ring.sq_array[idx] = idx;
        __atomic_store_n(ring.sq_tail, tail + 1, __ATOMIC_RELEASE);
        if (syscall(__NR_io_uring_enter, ring.fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
          perror("io_uring_enter");
          return 1;
        }
        unsigned head = *ring.cq_head;
        if (head == __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE) || ring.cqes[head & ring.cq_mask].res != (int)bs) abort();
        __atomic_store_n(ring.cq_head, head + 1, __ATOMIC_RELEASE);
      }
      *(fixed ? &fixed_ms : &read_ms) += now_ms() - t;
    }
  }
  const double mib = (double)ROUNDS * size / MIB;
  const double sync = mib / (sync_ms / 1e3), rd = mib / (read_ms / 1e3), fx = mib / (fixed_ms / 1e3);
  const double reads = (double)ROUNDS * size / bs;
  printf("pread loop %.0f MiB/s; io_uring READ %.0f MiB/s (%.3fx); READ_FIXED %.0f MiB/s (%.3fx)\n", sync, rd, rd / sync, fx,
         fx / sync);
  printf("per %zu-byte read: pread %.2f us, READ %.2f us, READ_FIXED %.2f us\n", bs, sync_ms * 1e3 / reads,
         read_ms * 1e3 / reads, fixed_ms * 1e3 / reads);
  return 0;
}
