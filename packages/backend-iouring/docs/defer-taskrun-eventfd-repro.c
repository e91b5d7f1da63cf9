// Reproduction (no Node, no liburing) of the wake-up loss behind issue 4's "eventfd read never
// completes" bug, on Linux 6.18: a ring with SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG and a
// registered eventfd (ringev) has an IORING_OP_READ parked on another eventfd (bell). Writing
// `bell` (from another thread: mode 0 or 2; from this thread: mode 1) queues the read's task work
// and sets IORING_SQ_TASKRUN every time, but `ringev` becomes readable only the first time (an
// RCU grace period late); from the second round on "ringev_readable=0": an event loop that waits
// on ringev never enters the ring and the read never completes.
//   gcc -O1 -o repro defer-taskrun-eventfd-repro.c -lpthread && ./repro 0
// Measured here (6.18.44): round 1 ringev_readable=1, rounds 2..5 ringev_readable=0, taskrun_flag=1.
// This is why the backend uses SINGLE_ISSUER|COOP_TASKRUN by default (native/io_uring.cc).
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>
#include <stdlib.h>
static int rfd; static unsigned *sqhead,*sqtail,*sqflags,*sqarr,sqmask,*cqhead,*cqtail,cqmask; static struct io_uring_sqe*sqes; static struct io_uring_cqe*cqes;
static int enter(unsigned sub, unsigned flags){return syscall(__NR_io_uring_enter,rfd,sub,0,flags,NULL,0);}
static int bell, ringev; static int mode;
static void* writer(void*a){ uint64_t one=1; usleep(mode==2?300:20000); if(write(bell,&one,8)!=8) perror("w"); return NULL;}
int main(int argc,char**argv){
  mode = argc>1 ? atoi(argv[1]) : 0;
  struct io_uring_params p; memset(&p,0,sizeof p);
  p.flags = IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN|IORING_SETUP_TASKRUN_FLAG;
  rfd = syscall(__NR_io_uring_setup, 8, &p); if(rfd<0){perror("setup");return 1;}
  char*sq=mmap(0,p.sq_off.array+p.sq_entries*4+p.cq_off.cqes+p.cq_entries*16,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_POPULATE,rfd,IORING_OFF_SQ_RING);
  sqhead=(void*)(sq+p.sq_off.head); sqtail=(void*)(sq+p.sq_off.tail); sqflags=(void*)(sq+p.sq_off.flags); sqarr=(void*)(sq+p.sq_off.array); sqmask=*(unsigned*)(sq+p.sq_off.ring_mask);
  cqhead=(void*)(sq+p.cq_off.head); cqtail=(void*)(sq+p.cq_off.tail); cqmask=*(unsigned*)(sq+p.cq_off.ring_mask); cqes=(void*)(sq+p.cq_off.cqes);
  sqes=mmap(0,p.sq_entries*64,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_POPULATE,rfd,IORING_OFF_SQES);
  ringev=eventfd(0,EFD_NONBLOCK); bell=eventfd(0,EFD_NONBLOCK);
  if(syscall(__NR_io_uring_register,rfd,IORING_REGISTER_EVENTFD,&ringev,1)<0){perror("reg");return 1;}
  uint64_t buf;
  for(int it=1; it<=5; it++){
    unsigned t=*sqtail; struct io_uring_sqe*s=&sqes[t&sqmask]; memset(s,0,64);
    s->opcode=IORING_OP_READ; s->fd=bell; s->addr=(uint64_t)&buf; s->len=8; s->off=-1; s->user_data=it;
    sqarr[t&sqmask]=t&sqmask; __atomic_store_n(sqtail,t+1,__ATOMIC_RELEASE);
    int r=enter(1,0);
    if (mode!=1){ pthread_t th; pthread_create(&th,0,writer,0); pthread_join(th,0);} else { uint64_t one=1; write(bell,&one,8);}
    static int ep=-1; if(ep<0){ep=epoll_create1(0); struct epoll_event e={.events=EPOLLIN,.data.fd=ringev}; epoll_ctl(ep,EPOLL_CTL_ADD,ringev,&e);} struct epoll_event ev; int pr=epoll_wait(ep,&ev,1,500);
    printf("it %d submit=%d ringev_readable=%d taskrun_flag=%d cq=%u\n",it,r,pr,!!(*sqflags&IORING_SQ_TASKRUN),*cqtail-*cqhead);
    uint64_t v; read(ringev,&v,8);
    enter(0,IORING_ENTER_GETEVENTS);
    printf("   after getevents cq=%u res=%d\n",*cqtail-*cqhead, *cqtail-*cqhead? cqes[*cqhead&cqmask].res:0);
    *cqhead=*cqtail; read(ringev,&v,8);
  }
}
