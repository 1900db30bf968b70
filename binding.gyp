{
  "targets": [
    { "target_name": "rephub_native", "sources": ["native/fadvise.c"], "cflags": ["-O2", "-Wall"] }
  ]
}
