// Module-level functions every miniss addon exports (epoll, io_uring, kqueue), written once.
// Includes <nan.h>: include it only from a binding. Definitions in src/module_methods.cc, which
// needs src/op.cc (SocketAddress) linked beside it.
#ifndef MINISS_MODULE_METHODS_H_
#define MINISS_MODULE_METHODS_H_

#include <nan.h>

namespace miniss {

NAN_METHOD(AddressMethod);         // address(fd, peer): [family, port, host] or -errno
NAN_METHOD(AllocateBufferMethod);  // allocateBuffer(capacity, alignment): aligned zeroed Uint8Array
NAN_METHOD(SignalFdMethod);        // signalFd(fd): adds 1 to an eventfd (thread-safe); 0 or -errno
#ifdef __linux__
NAN_METHOD(SetAffinityMethod);     // setAffinity(cpu): pins the calling thread to one CPU; 0 or -errno
#endif

}  // namespace miniss

#endif  // MINISS_MODULE_METHODS_H_
