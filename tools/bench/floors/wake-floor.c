/*
 * The machine's floor for waking an idle core, without Node or miniss: two threads pinned to
 * CPUs 0 and 1 exchange one eventfd write each way, GAP_US apart (so the receiver's CPU has gone
 * idle). Two rows:
 *   - "reply spun": the sender busy-reads its reply eventfd (as miniss's core 0 does while it
 *     awaits a result), so only the receiver's wake-up is paid;
 *   - "both sleep": the sender sleeps in epoll_wait for the reply (as postMessage's caller does),
 *     so a wake-up is paid each way.
 *
 *   cc -O2 -pthread -o /tmp/wake-floor tools/bench/floors/wake-floor.c && /tmp/wake-floor 20000
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define TRIPS 101

static int to_worker, to_main_sleep, to_main_spin;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

/* Sleeps in epoll_wait until fd is readable, then consumes it. */
static void wait_fd(int ep, int fd) {
  struct epoll_event e;
  while (epoll_wait(ep, &e, 1, -1) != 1) {
  }
  uint64_t v;
  if (read(fd, &v, 8) != 8) abort();
}

static void *worker(void *arg) {
  (void)arg;
  pin(1);
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN};
  epoll_ctl(ep, EPOLL_CTL_ADD, to_worker, &e);
  for (;;) {
    uint64_t mode;
    struct epoll_event ev;
    while (epoll_wait(ep, &ev, 1, -1) != 1) {
    }
    if (read(to_worker, &mode, 8) != 8) abort();
    uint64_t one = 1;
    if (write(mode == 1 ? to_main_spin : to_main_sleep, &one, 8) != 8) abort();
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void run(const char *name, uint64_t mode, int gap_us, int ep) {
  double xs[TRIPS];
  for (int i = 0; i < TRIPS; i++) {
    usleep(gap_us);
    double t0 = now_us();
    if (write(to_worker, &mode, 8) != 8) abort();
    if (mode == 1) {
      uint64_t v;
      while (read(to_main_spin, &v, 8) != 8) {
      }
    } else {
      wait_fd(ep, to_main_sleep);
    }
    xs[i] = now_us() - t0;
  }
  qsort(xs, TRIPS, sizeof xs[0], cmp);
  printf("%s: round trip median %.1f us (p10 %.1f, p90 %.1f), %d trips %d us apart\n", name, xs[TRIPS / 2],
         xs[TRIPS / 10], xs[TRIPS * 9 / 10], TRIPS, gap_us);
}

int main(int argc, char **argv) {
  int gap_us = argc > 1 ? atoi(argv[1]) : 20000;
  to_worker = eventfd(0, 0);
  to_main_sleep = eventfd(0, 0);
  to_main_spin = eventfd(0, EFD_NONBLOCK);
  pthread_t t;
  pthread_create(&t, NULL, worker, NULL);
  pin(0);
  int ep = epoll_create1(0);
  struct epoll_event e = {.events = EPOLLIN};
  epoll_ctl(ep, EPOLL_CTL_ADD, to_main_sleep, &e);
  run("reply spun (one wake-up)", 1, gap_us, ep);
  run("both sleep (two wake-ups)", 2, gap_us, ep);
  return 0;
}
