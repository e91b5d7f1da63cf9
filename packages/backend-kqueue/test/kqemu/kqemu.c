/*
 * kqemu: a small, TEST-ONLY kqueue(2)/kevent(2) emulation on Linux epoll, so the kqueue backend's
 * native code (native/kqueue.cc, binding.cc) and its JS driver can be built and run on a Linux
 * machine that has no libkqueue (Debian 12 does not package it). It is NOT libkqueue and NOT a
 * kqueue: it implements the subset native/kqueue.cc uses, with the semantics of FreeBSD's
 * kevent(2) man page as understood by the same author, so a misunderstanding shared by the
 * reactor and this file goes unnoticed. Results against it say "the code runs", not "it is right
 * on macOS/BSD". What it does:
 *
 * - kqueue() is an epoll fd (so it is pollable, as a real kqueue fd is, and libuv can watch it).
 * - EVFILT_READ / EVFILT_WRITE on an fd: EV_ADD (add or update), EV_DELETE, EV_CLEAR (maps to
 *   EPOLLET for the whole fd: epoll's edge flag is per fd, not per filter), EV_ONESHOT,
 *   EV_RECEIPT. Readiness out: EV_EOF on EPOLLRDHUP/EPOLLHUP (read) or EPOLLHUP/EPOLLERR (write),
 *   fflags 0 (a real kqueue puts the socket error there) and `data` 0 (no byte counts).
 * - EVFILT_USER: EV_ADD (EV_CLEAR or not), EV_DELETE, NOTE_TRIGGER, thread-safe; one eventfd per queue.
 * - EVFILT_TIMER: EV_ADD with `data` in milliseconds, EV_ONESHOT or periodic, EV_DELETE; one timerfd each,
 *   moved above the low fd numbers (a real kqueue's timers take none; see out_of_low_range).
 * - Change errors go to the event list as EV_ERROR entries (or errno when there is no room), and
 *   when any entry was written kevent() returns without waiting, as FreeBSD's does.
 * - close() of a kqueue fd releases the queue; close() of any fd drops its knotes. That needs the
 *   close() hook in include/sys/event.h, as Linux cannot tell us an fd was closed.
 *
 * Not emulated: EVFILT_VNODE/PROC/SIGNAL, NOTE_* other than NOTE_TRIGGER, EV_DISPATCH, EV_ENABLE/
 * EV_DISABLE, `data` byte counts, udata pointers beyond round-tripping, fork().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "../shim/sys/event.h"

int kqemu_close(int fd);

enum { KIND_FD = 1, KIND_USER = 2, KIND_TIMER = 3 };

struct knote {
  int used;
  unsigned short flags; /* EV_CLEAR / EV_ONESHOT as given */
  unsigned int fflags;
  void* udata;
};

struct fdnotes {
  int fd;
  struct knote rd, wr;
  int in_epoll;
  struct fdnotes* next;
};

struct usernote {
  uintptr_t ident;
  unsigned short flags;
  int triggered;
  void* udata;
  struct usernote* next;
};

struct timernote {
  uintptr_t ident;
  int tfd;
  unsigned short flags;
  void* udata;
  struct timernote* next;
};

struct kq {
  int epfd;
  int evfd; /* user events */
  pthread_mutex_t mu;
  struct fdnotes* fds;
  struct usernote* users;
  struct timernote* timers;
};

/* The emulation's registry of live queues, by epoll fd. Test-only global state. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct kq* g_kqs[4096];

static uint64_t cookie(int kind, int v) { return ((uint64_t)kind << 32) | (uint32_t)v; }

static struct kq* find_kq(int fd) {
  struct kq* k = NULL;
  pthread_mutex_lock(&g_mu);
  if (fd >= 0 && fd < (int)(sizeof g_kqs / sizeof g_kqs[0])) k = g_kqs[fd];
  pthread_mutex_unlock(&g_mu);
  return k;
}

static void free_kq(struct kq* k) {
  while (k->fds) {
    struct fdnotes* n = k->fds;
    k->fds = n->next;
    free(n);
  }
  while (k->users) {
    struct usernote* u = k->users;
    k->users = u->next;
    free(u);
  }
  while (k->timers) {
    struct timernote* t = k->timers;
    k->timers = t->next;
    close(t->tfd);
    free(t);
  }
  close(k->evfd);
  pthread_mutex_destroy(&k->mu);
  free(k);
}

int kqueue(void) {
  struct kq* k = calloc(1, sizeof *k);
  if (!k) {
    errno = ENOMEM;
    return -1;
  }
  k->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (k->epfd < 0) {
    int e = errno;
    free(k);
    errno = e;
    return -1;
  }
  if (k->epfd >= (int)(sizeof g_kqs / sizeof g_kqs[0])) {
    close(k->epfd);
    free(k);
    errno = EMFILE;
    return -1;
  }
  k->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = cookie(KIND_USER, 0)};
  if (k->evfd < 0 || epoll_ctl(k->epfd, EPOLL_CTL_ADD, k->evfd, &ev) < 0) {
    int e = errno;
    if (k->evfd >= 0) close(k->evfd);
    close(k->epfd);
    free(k);
    errno = e;
    return -1;
  }
  pthread_mutex_init(&k->mu, NULL);
  pthread_mutex_lock(&g_mu);
  g_kqs[k->epfd] = k;
  pthread_mutex_unlock(&g_mu);
  return k->epfd;
}

static struct fdnotes* find_fd(struct kq* k, int fd, struct fdnotes*** link) {
  struct fdnotes** pp = &k->fds;
  for (; *pp; pp = &(*pp)->next) {
    if ((*pp)->fd == fd) break;
  }
  if (link) *link = pp;
  return *pp;
}

/* Brings the epoll registration of n in line with its knotes. Returns 0 or an errno. */
static int sync_fd(struct kq* k, struct fdnotes* n) {
  uint32_t events = 0;
  if (n->rd.used) events |= EPOLLIN | EPOLLRDHUP;
  if (n->wr.used) events |= EPOLLOUT;
  if ((n->rd.used && (n->rd.flags & EV_CLEAR)) || (n->wr.used && (n->wr.flags & EV_CLEAR))) events |= EPOLLET;
  if (events == 0) {
    if (n->in_epoll && epoll_ctl(k->epfd, EPOLL_CTL_DEL, n->fd, NULL) < 0 && errno != ENOENT && errno != EBADF) return errno;
    n->in_epoll = 0;
    return 0;
  }
  struct epoll_event ev = {.events = events, .data.u64 = cookie(KIND_FD, n->fd)};
  /* MOD first when we believe it is registered; the kernel drops a closed fd by itself, so
   * ENOENT falls back to ADD, and EEXIST (an fd we forgot) falls back to MOD. */
  int r = epoll_ctl(k->epfd, n->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, n->fd, &ev);
  if (r < 0 && errno == ENOENT) r = epoll_ctl(k->epfd, EPOLL_CTL_ADD, n->fd, &ev);
  if (r < 0 && errno == EEXIST) r = epoll_ctl(k->epfd, EPOLL_CTL_MOD, n->fd, &ev);
  if (r < 0) return errno == EPERM ? EINVAL : errno; /* epoll refuses regular files */
  n->in_epoll = 1;
  return 0;
}

static int change_fd(struct kq* k, const struct kevent* c) {
  const int fd = (int)c->ident;
  if (fcntl(fd, F_GETFD) < 0) return EBADF;
  struct fdnotes** link;
  struct fdnotes* n = find_fd(k, fd, &link);
  if (c->flags & EV_DELETE) {
    struct knote* kn = n ? (c->filter == EVFILT_READ ? &n->rd : &n->wr) : NULL;
    if (!kn || !kn->used) return ENOENT;
    kn->used = 0;
    int e = sync_fd(k, n);
    if (!n->rd.used && !n->wr.used) {
      *link = n->next;
      free(n);
    }
    return e;
  }
  if (!(c->flags & EV_ADD)) return EINVAL;
  int created = 0;
  if (!n) {
    n = calloc(1, sizeof *n);
    if (!n) return ENOMEM;
    n->fd = fd;
    n->next = k->fds;
    k->fds = n;
    link = &k->fds;
    created = 1;
  }
  struct knote* kn = c->filter == EVFILT_READ ? &n->rd : &n->wr;
  struct knote saved = *kn;
  kn->used = 1;
  kn->flags = c->flags & (EV_CLEAR | EV_ONESHOT);
  kn->fflags = c->fflags;
  kn->udata = c->udata;
  int e = sync_fd(k, n);
  if (e != 0) {
    *kn = saved;
    if (created) {
      *link = n->next;
      free(n);
    }
  }
  return e;
}

static int change_user(struct kq* k, const struct kevent* c) {
  struct usernote** pp = &k->users;
  for (; *pp; pp = &(*pp)->next) {
    if ((*pp)->ident == c->ident) break;
  }
  struct usernote* u = *pp;
  if (c->flags & EV_DELETE) {
    if (!u) return ENOENT;
    *pp = u->next;
    free(u);
    return 0;
  }
  if (c->flags & EV_ADD) {
    if (!u) {
      u = calloc(1, sizeof *u);
      if (!u) return ENOMEM;
      u->ident = c->ident;
      u->next = k->users;
      k->users = u;
    }
    u->flags = c->flags & (EV_CLEAR | EV_ONESHOT);
    u->udata = c->udata;
  } else if (!u) {
    return ENOENT;
  }
  if (c->fflags & NOTE_TRIGGER) {
    u->triggered = 1;
    uint64_t one = 1;
    ssize_t w;
    do {
      w = write(k->evfd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
  }
  return 0;
}

/*
 * Moves a descriptor the emulation needs mid-run (a timer's timerfd) out of the low range. A real
 * kqueue's timers take no descriptor, so a program can count on a number it has just closed
 * staying free while it starts timers; the backend fuzzer reads such a stale number on purpose,
 * and with a timerfd reusing it that read consumed the timer's expiration: the timeout never
 * fired and its timerfd stayed open. Leaves the fd where it is when the limit has no room above.
 */
static int out_of_low_range(int fd) {
  struct rlimit rl;
  if (fd < 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 512) return fd;
  const rlim_t floor = rl.rlim_cur / 2 < 65536 ? rl.rlim_cur / 2 : 65536;
  const int high = fcntl(fd, F_DUPFD_CLOEXEC, (int)floor);
  if (high < 0) return fd;
  close(fd);
  return high;
}

static int change_timer(struct kq* k, const struct kevent* c) {
  struct timernote** pp = &k->timers;
  for (; *pp; pp = &(*pp)->next) {
    if ((*pp)->ident == c->ident) break;
  }
  struct timernote* t = *pp;
  if (c->flags & EV_DELETE) {
    if (!t) return ENOENT;
    *pp = t->next;
    close(t->tfd); /* leaves the epoll set with it */
    free(t);
    return 0;
  }
  if (!(c->flags & EV_ADD)) return EINVAL;
  if (c->data < 0) return EINVAL;
  if (!t) {
    t = calloc(1, sizeof *t);
    if (!t) return ENOMEM;
    t->tfd = out_of_low_range(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = cookie(KIND_TIMER, t->tfd)};
    if (t->tfd < 0 || epoll_ctl(k->epfd, EPOLL_CTL_ADD, t->tfd, &ev) < 0) {
      int e = errno;
      if (t->tfd >= 0) close(t->tfd);
      free(t);
      return e;
    }
    t->ident = c->ident;
    t->next = k->timers;
    k->timers = t;
  }
  t->flags = c->flags & (EV_CLEAR | EV_ONESHOT);
  t->udata = c->udata;
  /* data 0 fires at once (FreeBSD >= 12); timerfd needs a non-zero value for that. */
  const long long ms = (long long)c->data;
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = ms / 1000;
  its.it_value.tv_nsec = (ms % 1000) * 1000000L;
  if (ms == 0) its.it_value.tv_nsec = 1;
  if (!(c->flags & EV_ONESHOT)) its.it_interval = its.it_value;
  if (timerfd_settime(t->tfd, 0, &its, NULL) < 0) return errno;
  return 0;
}

static int apply_change(struct kq* k, const struct kevent* c) {
  switch (c->filter) {
    case EVFILT_READ:
    case EVFILT_WRITE:
      return change_fd(k, c);
    case EVFILT_USER:
      return change_user(k, c);
    case EVFILT_TIMER:
      return change_timer(k, c);
    default:
      return EINVAL;
  }
}

static void put(struct kevent* out, uintptr_t ident, short filter, unsigned short flags, unsigned int fflags,
                intptr_t data, void* udata) {
  out->ident = ident;
  out->filter = filter;
  out->flags = flags;
  out->fflags = fflags;
  out->data = data;
  out->udata = udata;
}

/* Turns one epoll event into at most 2 kevents (no more than `room`); with k->mu held. */
static int translate(struct kq* k, const struct epoll_event* e, struct kevent* out, int room) {
  const int kind = (int)(e->data.u64 >> 32);
  const int v = (int)(uint32_t)e->data.u64;
  int n = 0;
  if (kind == KIND_FD) {
    struct fdnotes** link;
    struct fdnotes* fn = find_fd(k, v, &link);
    if (!fn) return 0;
    /* A real kqueue copies so_error into fflags without clearing it; reading SO_ERROR here would
     * clear it (Linux), so fflags stays 0: the reactor asks SO_ERROR itself. */
    const unsigned int soerr = 0;
    if (fn->rd.used && n < room && (e->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
      const unsigned short eof = (e->events & (EPOLLRDHUP | EPOLLHUP)) ? EV_EOF : 0;
      put(&out[n++], (uintptr_t)v, EVFILT_READ, (unsigned short)(fn->rd.flags | eof), soerr, 0, fn->rd.udata);
      if (fn->rd.flags & EV_ONESHOT) fn->rd.used = 0;
    }
    if (fn->wr.used && n < room && (e->events & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
      const unsigned short eof = (e->events & (EPOLLHUP | EPOLLERR)) ? EV_EOF : 0;
      put(&out[n++], (uintptr_t)v, EVFILT_WRITE, (unsigned short)(fn->wr.flags | eof), soerr, 0, fn->wr.udata);
      if (fn->wr.flags & EV_ONESHOT) fn->wr.used = 0;
    }
    if (!fn->rd.used || !fn->wr.used) {
      sync_fd(k, fn);
      if (!fn->rd.used && !fn->wr.used) {
        *link = fn->next;
        free(fn);
      }
    }
    return n;
  }
  if (kind == KIND_USER) {
    uint64_t cnt;
    while (read(k->evfd, &cnt, sizeof cnt) < 0 && errno == EINTR) {
    }
    int again = 0;
    struct usernote** pp = &k->users;
    while (*pp) {
      struct usernote* u = *pp;
      if (u->triggered) {
        if (n >= room) {
          again = 1;
        } else {
          put(&out[n++], u->ident, EVFILT_USER, u->flags, 0, 0, u->udata);
          if (u->flags & EV_ONESHOT) {
            *pp = u->next;
            free(u);
            continue;
          }
          if (u->flags & EV_CLEAR) u->triggered = 0;
          else again = 1; /* level-triggered: stays active */
        }
      }
      pp = &u->next;
    }
    if (again) {
      uint64_t one = 1;
      ssize_t w = write(k->evfd, &one, sizeof one);
      (void)w;
    }
    return n;
  }
  if (kind == KIND_TIMER) {
    struct timernote** pp = &k->timers;
    for (; *pp; pp = &(*pp)->next) {
      if ((*pp)->tfd == v) break;
    }
    struct timernote* t = *pp;
    if (!t) return 0;
    uint64_t expirations = 0;
    if (read(t->tfd, &expirations, sizeof expirations) != (ssize_t)sizeof expirations) return 0;
    if (room < 1) return 0; /* cannot happen: callers leave room */
    put(&out[n++], t->ident, EVFILT_TIMER, t->flags, 0, (intptr_t)expirations, t->udata);
    if (t->flags & EV_ONESHOT) {
      *pp = t->next;
      close(t->tfd);
      free(t);
    }
    return n;
  }
  return 0;
}

int kevent(int kqfd, const struct kevent* changes, int nchanges, struct kevent* events, int nevents,
           const struct timespec* timeout) {
  struct kq* k = find_kq(kqfd);
  if (!k) {
    errno = EBADF;
    return -1;
  }
  if (nchanges < 0 || nevents < 0) {
    errno = EINVAL;
    return -1;
  }
  int written = 0;
  pthread_mutex_lock(&k->mu);
  for (int i = 0; i < nchanges; i++) {
    const int e = apply_change(k, &changes[i]);
    if (e != 0 || (changes[i].flags & EV_RECEIPT)) {
      if (written < nevents) {
        events[written] = changes[i];
        events[written].flags = EV_ERROR;
        events[written].data = e;
        written++;
      } else if (e != 0) {
        pthread_mutex_unlock(&k->mu);
        errno = e;
        return -1;
      }
    }
  }
  pthread_mutex_unlock(&k->mu);
  if (written > 0 || nevents == 0) return written;

  int ms = -1;
  if (timeout) {
    const long long t = (long long)timeout->tv_sec * 1000 + (timeout->tv_nsec + 999999) / 1000000;
    ms = t > INT_MAX ? INT_MAX : (int)t;
  }
  /* Each epoll event becomes at most 2 kevents. */
  struct epoll_event evs[64];
  int max = nevents / 2;
  if (max < 1) max = 1;
  if (max > 64) max = 64;
  const int got = epoll_wait(k->epfd, evs, max, ms);
  if (got < 0) return -1; /* EINTR as kevent(2) */
  int n = 0;
  pthread_mutex_lock(&k->mu);
  for (int i = 0; i < got && n < nevents; i++) n += translate(k, &evs[i], events + n, nevents - n);
  pthread_mutex_unlock(&k->mu);
  return n;
}

int kqemu_close(int fd) {
  pthread_mutex_lock(&g_mu);
  struct kq* own = NULL;
  if (fd >= 0 && fd < (int)(sizeof g_kqs / sizeof g_kqs[0])) {
    own = g_kqs[fd];
    g_kqs[fd] = NULL;
  }
  /* Closing an fd drops its knotes in every queue, as on the BSDs. */
  for (size_t i = 0; i < sizeof g_kqs / sizeof g_kqs[0]; i++) {
    struct kq* k = g_kqs[i];
    if (!k) continue;
    pthread_mutex_lock(&k->mu);
    struct fdnotes** link;
    struct fdnotes* n = find_fd(k, fd, &link);
    if (n) {
      if (n->in_epoll) epoll_ctl(k->epfd, EPOLL_CTL_DEL, fd, NULL);
      *link = n->next;
      free(n);
    }
    pthread_mutex_unlock(&k->mu);
  }
  pthread_mutex_unlock(&g_mu);
  if (own) free_kq(own);
  return close(fd);
}
