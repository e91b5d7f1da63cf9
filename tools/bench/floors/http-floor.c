/*
 * The machine's floor for serving a keep-alive HTTP request over io_uring, without Node or miniss:
 * the same responder as tools/bench/http-net.mjs (every complete request head, counted by its
 * CRLFCRLF, even one split across reads, gets the 200 "Hello, World!" response; a chunk holding n
 * heads gets n copies in one send; no parsing beyond that), written in plain C over a raw ring (no
 * liburing). One thread, one ring (SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG as the backend uses,
 * falling back like it), one IORING_OP_ACCEPT, and per connection one IORING_OP_RECV into its own
 * 16 KiB buffer plus at most one IORING_OP_SEND; one io_uring_enter per loop submits everything
 * queued and waits for a completion. What a plain C io_uring server spends per request here,
 * with no runtime, parser or promise at all: the floor against which issue 8's "server CPU
 * microseconds per request" of a JavaScript server is read (http.bench.ts measures it in the
 * same run when a C compiler is present).
 *
 *   cc -O2 -o /tmp/http-floor tools/bench/floors/http-floor.c && taskset -c 0 /tmp/http-floor 0
 *   (prints "listening on http://127.0.0.1:PORT"; argv[1] is the port, 0 = ephemeral; SIGTERM or
 *   SIGINT stops it. Add -DRECV_POLL_FIRST to arm each recv's poll before trying it.)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "floor_ring.h"

#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_RECVSEND_POLL_FIRST
#define IORING_RECVSEND_POLL_FIRST (1U << 0)
#endif

#define SQ_ENTRIES 1024
#define CQ_ENTRIES 16384
#define MAX_CONNS 65536
#define RECV_SIZE 16384
/* A chunk of RECV_SIZE bytes holds at most RECV_SIZE / 4 heads; the response stream is periodic,
 * so any run of owed bytes is a slice of this many back-to-back copies. */
#define COPIES (RECV_SIZE / 4 + 1)

enum { OP_ACCEPT, OP_RECV, OP_SEND };
#define UD(idx, op) (((uint64_t)(idx) << 8) | (op))

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
#define RESP_LEN (sizeof RESPONSE - 1)
static char *copies; /* COPIES * RESP_LEN bytes of RESPONSE repeated */

struct conn {
  int fd;
  unsigned state;    /* bytes of "\r\n\r\n" matched at the end of what was received (0..3) */
  unsigned phase;    /* offset of the next unsent byte within RESPONSE */
  uint64_t owed;     /* response bytes neither sent nor in flight */
  int recv_inflight; /* 0/1 */
  int send_len;      /* length of the send in flight, 0 if none */
  int dead;          /* peer gone or error: close once nothing is in flight */
  char buf[RECV_SIZE];
};

static struct conn *conns[MAX_CONNS];
static unsigned free_list[MAX_CONNS], n_free, n_alloc;

static struct floor_ring ring;
static unsigned sqe_tail; /* next SQE to fill */
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static int enter(unsigned to_submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, ring.fd, to_submit, min_complete, flags, NULL, 0);
}

static unsigned unsubmitted(void) {
  return sqe_tail - __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE);
}

static struct io_uring_sqe *get_sqe(void) {
  while (unsubmitted() >= ring.sq_entries) { /* full: hand the kernel what is queued */
    if (enter(unsubmitted(), 0, 0) < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
      perror("io_uring_enter");
      exit(1);
    }
  }
  struct io_uring_sqe *sqe = &ring.sqes[sqe_tail & ring.sq_mask];
  memset(sqe, 0, sizeof *sqe);
  return sqe;
}

static void queue(void) {
  __atomic_store_n(ring.sq_tail, ++sqe_tail, __ATOMIC_RELEASE);
}

static void queue_accept(int lfd) {
  struct io_uring_sqe *sqe = get_sqe();
  sqe->opcode = IORING_OP_ACCEPT;
  sqe->fd = lfd;
  sqe->accept_flags = SOCK_CLOEXEC;
  sqe->user_data = UD(0, OP_ACCEPT);
  queue();
}

static void queue_recv(unsigned idx) {
  struct conn *c = conns[idx];
  struct io_uring_sqe *sqe = get_sqe();
  sqe->opcode = IORING_OP_RECV;
  sqe->fd = c->fd;
  sqe->addr = (uintptr_t)c->buf;
  sqe->len = RECV_SIZE;
#ifdef RECV_POLL_FIRST
  sqe->ioprio = IORING_RECVSEND_POLL_FIRST;
#endif
  sqe->user_data = UD(idx, OP_RECV);
  queue();
  c->recv_inflight = 1;
}

/* Sends the next slice of the owed bytes, if any and no send is in flight (one at a time keeps
 * the stream in order). */
static void queue_send(unsigned idx) {
  struct conn *c = conns[idx];
  if (c->send_len || !c->owed || c->dead) return;
  uint64_t room = (uint64_t)COPIES * RESP_LEN - c->phase;
  unsigned len = (unsigned)(c->owed < room ? c->owed : room);
  struct io_uring_sqe *sqe = get_sqe();
  sqe->opcode = IORING_OP_SEND;
  sqe->fd = c->fd;
  sqe->addr = (uintptr_t)(copies + c->phase);
  sqe->len = len;
  sqe->msg_flags = MSG_NOSIGNAL;
  sqe->user_data = UD(idx, OP_SEND);
  queue();
  c->owed -= len;
  c->send_len = (int)len;
}

static void release_if_idle(unsigned idx) {
  struct conn *c = conns[idx];
  if (!c->dead || c->recv_inflight || c->send_len) return;
  close(c->fd);
  c->fd = -1;
  free_list[n_free++] = idx; /* kept allocated: reused by the next connection */
}

static void kill_conn(unsigned idx) {
  struct conn *c = conns[idx];
  if (!c->dead) {
    c->dead = 1;
    if (c->recv_inflight) shutdown(c->fd, SHUT_RDWR); /* completes the pending recv with 0 */
  }
  release_if_idle(idx);
}

/* Counts complete "\r\n\r\n" in p[0..n), continuing a match carried in *state across chunks. */
static unsigned count_heads(const char *p, size_t n, unsigned *state) {
  const char *end = p + n;
  unsigned s = *state, heads = 0;
  while (p < end) {
    if (s == 0) {
      p = memchr(p, '\r', (size_t)(end - p));
      if (!p) break;
      s = 1;
      p++;
      continue;
    }
    char ch = *p++;
    if (s == 2)
      s = ch == '\r' ? 3 : 0;
    else /* 1 or 3: after a '\r' */
      s = ch == '\n' ? s + 1 : ch == '\r' ? 1 : 0;
    if (s == 4) {
      heads++;
      s = 0;
    }
  }
  *state = s;
  return heads;
}

static void on_accept(int lfd, int res) {
  queue_accept(lfd);
  if (res < 0) return; /* ECONNABORTED, EMFILE...: keep accepting */
  unsigned idx;
  if (n_free) {
    idx = free_list[--n_free];
  } else if (n_alloc < MAX_CONNS - 1) {
    idx = ++n_alloc; /* index 0 is never a connection */
    conns[idx] = malloc(sizeof(struct conn));
    if (!conns[idx]) {
      perror("malloc");
      exit(1);
    }
  } else {
    close(res);
    return;
  }
  struct conn *c = conns[idx];
  c->fd = res;
  c->state = c->phase = 0;
  c->owed = 0;
  c->recv_inflight = c->send_len = c->dead = 0;
  int one = 1;
  setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  queue_recv(idx);
}

static void on_recv(unsigned idx, int res) {
  struct conn *c = conns[idx];
  c->recv_inflight = 0;
  if (res <= 0 || c->dead) {
    kill_conn(idx);
    return;
  }
  unsigned heads = count_heads(c->buf, (size_t)res, &c->state);
  if (heads) {
    c->owed += (uint64_t)heads * RESP_LEN;
    queue_send(idx);
  }
  queue_recv(idx);
}

static void on_send(unsigned idx, int res) {
  struct conn *c = conns[idx];
  unsigned len = (unsigned)c->send_len;
  c->send_len = 0;
  if (res <= 0 || c->dead) {
    kill_conn(idx);
    return;
  }
  c->owed += len - (unsigned)res; /* a short write: the rest goes out next */
  c->phase = (unsigned)((c->phase + (unsigned)res) % RESP_LEN);
  queue_send(idx);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;

  copies = malloc((size_t)COPIES * RESP_LEN);
  if (!copies) {
    perror("malloc");
    return 1;
  }
  for (unsigned i = 0; i < COPIES; i++) memcpy(copies + (size_t)i * RESP_LEN, RESPONSE, RESP_LEN);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: io_uring_enter returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof addr;
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 1024) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
    perror("listen");
    return 1;
  }

  static const unsigned flag_sets[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
      0,
  };
  struct io_uring_params p;
  int ok = -1;
  for (unsigned i = 0; i < sizeof flag_sets / sizeof flag_sets[0] && ok != 0; i++) {
    memset(&p, 0, sizeof p);
    p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
    p.cq_entries = CQ_ENTRIES;
    ok = floor_ring_init(&ring, SQ_ENTRIES, &p);
  }
  if (ok != 0) {
    perror("io_uring_setup");
    return 1;
  }
  for (unsigned i = 0; i < ring.sq_entries; i++) ring.sq_array[i] = i; /* SQE i lives in slot i */
  sqe_tail = *ring.sq_tail;

  printf("listening on http://127.0.0.1:%u\n", ntohs(addr.sin_port));
  fflush(stdout);

  queue_accept(lfd);
  while (!stop) {
    if (enter(unsubmitted(), 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR && errno != EAGAIN &&
        errno != EBUSY) {
      perror("io_uring_enter");
      return 1;
    }
    unsigned head = *ring.cq_head;
    unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
      struct io_uring_cqe *cqe = &ring.cqes[head & ring.cq_mask];
      unsigned idx = (unsigned)(cqe->user_data >> 8);
      int res = cqe->res;
      switch (cqe->user_data & 0xff) {
      case OP_ACCEPT: on_accept(lfd, res); break;
      case OP_RECV: on_recv(idx, res); break;
      case OP_SEND: on_send(idx, res); break;
      }
      /* freeing CQ slots as we go leaves room for completions of SQEs a full SQ flushes */
      __atomic_store_n(ring.cq_head, head + 1, __ATOMIC_RELEASE);
    }
  }

  for (unsigned i = 1; i <= n_alloc; i++)
    if (conns[i]->fd >= 0) close(conns[i]->fd);
  close(lfd);
  close(ring.fd);
  return 0;
}
