{
  # kemari_pages: the N-API addon of src/pages/ (changed-page scan, XXH3 fingerprints, XOR deltas, mmap).
  # Built at install by node-gyp-build (or `npm run build:native`); loaded by src/pages/native-binding.ts, which falls
  # back to the TypeScript implementation when the build is missing.
  "targets": [
    {
      "target_name": "kemari_pages",
      "sources": [
        "native/addon.cc",
        "native/page_scan.cc",
        "native/page_delta.cc",
        "native/page_gather.cc",
        "native/file_map.cc"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "cflags_cc": ["-O3", "-std=c++17", "-Wall", "-Wextra"],
      "conditions": [
        ["target_arch=='x64'", {
          # SSE4.2 (x86-64-v2, every x86 CPU since 2009) lets the compiler use SSE4.1/4.2 and POPCNT in the scans.
          "cflags": ["-msse4.2"],
          "cflags_cc": ["-msse4.2"],
          "xcode_settings": {"OTHER_CFLAGS": ["-msse4.2"]}
        }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_OPTIMIZATION_LEVEL": "3",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "MACOSX_DEPLOYMENT_TARGET": "11.0"
          }
        }]
      ]
    }
  ]
}
