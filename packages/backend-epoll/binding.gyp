{
  # The epoll backend is Linux-only. On any other OS package.json's "miniss.nativeOs" makes
  # miniss-build-native skip the build, and this file compiles nothing as a second guard.
  "variables": {
    # op.cc/thread_pool.cc and their headers are shared with the kqueue backend (@miniss/native-common).
    # Relative to this file: gyp's make generator cannot place objects for absolute source paths.
    "native_common": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('@miniss/native-common/package.json')))\")",
    # nan's headers, relative too: gyp writes include paths into the Makefile unquoted, so an
    # absolute one under a checkout path with a space in it would split into two arguments.
    "nan_dir": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('nan/package.json')))\")"
  },
  "targets": [
    {
      "target_name": "miniss_epoll",
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/binding.cc",
            "native/epoll.cc",
            "<(native_common)/src/module_methods.cc",
            "<(native_common)/src/op.cc",
            "<(native_common)/src/thread_pool.cc"
          ],
          "include_dirs": [
            "<(nan_dir)",
            "<(native_common)/include"
          ],
          "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-cast-function-type"],
          "cflags_cc!": ["-fno-exceptions"],
          "defines": ["_GNU_SOURCE"],
          "libraries": ["-lpthread"]
        }]
      ]
    }
  ]
}
