{
  # The io_uring backend is Linux-only. On any other OS package.json's "miniss.nativeOs" makes
  # miniss-build-native skip the build, and this file compiles nothing as a second guard (the
  # target has no sources there, so node-gyp produces no addon and isSupported() says why).
  "variables": {
    # address/allocateBuffer/signalFd/setAffinity (module_methods.cc, with op.cc for SocketAddress)
    # are shared with the epoll and kqueue backends (@miniss/native-common).
    # Relative to this file: gyp's make generator cannot place objects for absolute source paths.
    "native_common": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('@miniss/native-common/package.json')))\")",
    # nan's headers, relative too: gyp writes include paths into the Makefile unquoted, so an
    # absolute one under a checkout path with a space in it would split into two arguments.
    "nan_dir": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('nan/package.json')))\")"
  },
  "targets": [
    {
      "target_name": "miniss_iouring",
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/binding.cc",
            "native/io_uring.cc",
            "<(native_common)/src/module_methods.cc",
            "<(native_common)/src/op.cc"
          ],
          "include_dirs": [
            "<(nan_dir)",
            "<(native_common)/include"
          ],
          "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-cast-function-type"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
          "defines": ["_GNU_SOURCE"]
        }]
      ]
    }
  ]
}
