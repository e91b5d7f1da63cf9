{
  # The epoll backend is Linux-only. On any other OS package.json's "miniss.nativeOs" makes
  # miniss-build-native skip the build, and this file compiles nothing as a second guard.
  "targets": [
    {
      "target_name": "miniss_epoll",
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/binding.cc",
            "native/epoll.cc",
            "native/op.cc",
            "native/thread_pool.cc"
          ],
          "include_dirs": ["<!(node -p \"require('node:path').dirname(require.resolve('nan/package.json'))\")"],
          "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-cast-function-type"],
          "cflags_cc!": ["-fno-exceptions"],
          "defines": ["_GNU_SOURCE"],
          "libraries": ["-lpthread"]
        }]
      ]
    }
  ]
}
