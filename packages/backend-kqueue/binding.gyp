{
  # kqueue exists on macOS and the BSDs. On Linux this compiles nothing unless
  # MINISS_KQUEUE_INCLUDE_DIR and MINISS_KQUEUE_LIB_DIR point at a kqueue emulation library
  # (sys/event.h and libkqueue.so: libkqueue, or test/kqemu via scripts/build-kqemu.mjs), in which
  # case it builds against it. native-common's miniss-build-native lets the build run on Linux when both are
  # set (package.json "miniss.nativeEnv").
  "variables": {
    # Either may be relative (to this directory) or absolute. The include dir is made relative
    # (gyp writes include paths into the Makefile unquoted); the library dir is used absolute and
    # single-quoted in the link command below, so a path with a space in it survives both.
    "kq_inc": "<!(node -p \"const d = process.env.MINISS_KQUEUE_INCLUDE_DIR; d ? require('node:path').relative('.', require('node:path').resolve(d)) || '.' : ''\")",
    "kq_lib": "<!(node -p \"const d = process.env.MINISS_KQUEUE_LIB_DIR; d ? require('node:path').resolve(d) : ''\")",
    # op.cc/thread_pool.cc and their headers are shared with the epoll backend (@miniss/native-common).
    # Relative to this file: gyp's make generator cannot place objects for absolute source paths.
    "native_common": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('@miniss/native-common/package.json')))\")",
    # nan's headers, relative too: gyp writes include paths into the Makefile unquoted, so an
    # absolute one under a checkout path with a space in it would split into two arguments.
    "nan_dir": "<!(node -p \"require('node:path').relative('.', require('node:path').dirname(require.resolve('nan/package.json')))\")"
  },
  "targets": [
    {
      "target_name": "miniss_kqueue",
      "conditions": [
        ["OS=='mac' or OS=='freebsd' or OS=='openbsd' or OS=='netbsd' or (OS=='linux' and kq_inc!='' and kq_lib!='')", {
          "sources": [
            "native/binding.cc",
            "native/kqueue.cc",
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
          "xcode_settings": {
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "MACOSX_DEPLOYMENT_TARGET": "11.0"
          },
          "libraries": ["-lpthread"]
        }],
        ["OS=='linux' and kq_inc!='' and kq_lib!=''", {
          "include_dirs": ["<(kq_inc)"],
          "defines": ["_GNU_SOURCE"],
          "libraries": ["-L'<(kq_lib)'", "-Wl,-rpath,'<(kq_lib)'", "-lkqueue"]
        }]
      ]
    }
  ]
}
