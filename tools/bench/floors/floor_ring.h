/*
 * The raw io_uring set-up the floor programs beside this file share (no liburing): io_uring_setup,
 * the mmaps of the rings and the SQE array, and the pointers into them. Header-only: each program
 * still builds with one `cc` command, which finds this file next to its source.
 */
#ifndef MINISS_FLOOR_RING_H
#define MINISS_FLOOR_RING_H

#include <errno.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct floor_ring {
  int fd;
  unsigned sq_entries, sq_mask, cq_mask;
  unsigned *sq_head, *sq_tail, *sq_array, *cq_head, *cq_tail, *cq_flags;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
};

/*
 * Creates a ring of `entries` SQEs with the caller's `*p` (flags, cq_entries), maps it and fills
 * `r`. Returns 0, or -1 with errno set when io_uring_setup refuses `*p` (so a caller can try other
 * flags); a mapping that fails ends the program.
 */
static int floor_ring_init(struct floor_ring *r, unsigned entries, struct io_uring_params *p) {
  r->fd = (int)syscall(__NR_io_uring_setup, entries, p);
  if (r->fd < 0) return -1;
  size_t sq_size = p->sq_off.array + p->sq_entries * sizeof(unsigned);
  size_t cq_size = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
  char *sq_ring, *cq_ring;
  if (p->features & IORING_FEAT_SINGLE_MMAP) {
    if (cq_size > sq_size) sq_size = cq_size;
    sq_ring = cq_ring = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                             IORING_OFF_SQ_RING);
  } else {
    sq_ring = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    cq_ring = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
  }
  r->sqes = mmap(NULL, p->sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
  if (sq_ring == MAP_FAILED || cq_ring == MAP_FAILED || r->sqes == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  r->sq_entries = p->sq_entries;
  r->sq_head = (unsigned *)(sq_ring + p->sq_off.head);
  r->sq_tail = (unsigned *)(sq_ring + p->sq_off.tail);
  r->sq_mask = *(unsigned *)(sq_ring + p->sq_off.ring_mask);
  r->sq_array = (unsigned *)(sq_ring + p->sq_off.array);
  r->cq_head = (unsigned *)(cq_ring + p->cq_off.head);
  r->cq_tail = (unsigned *)(cq_ring + p->cq_off.tail);
  r->cq_mask = *(unsigned *)(cq_ring + p->cq_off.ring_mask);
  r->cq_flags = (unsigned *)(cq_ring + p->cq_off.flags);
  r->cqes = (struct io_uring_cqe *)(cq_ring + p->cq_off.cqes);
  return 0;
}

#endif
