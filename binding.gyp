{
  "targets": [
    { "target_name": "rephub_native", "sources": ["native/fileio.c", "native/crc32.c"], "cflags": ["-O2", "-Wall"], "libraries": ["-lpthread"] },
    { "target_name": "rephub_rbd", "sources": ["native/rbd.c"], "cflags": ["-O2", "-Wall"], "libraries": ["-ldl"] }
  ]
}
