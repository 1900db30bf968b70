{
  "targets": [
    { "target_name": "rephub_native", "sources": ["native/fileio.c"], "cflags": ["-O2", "-Wall"] }
  ]
}
