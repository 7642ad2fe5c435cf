{
  "targets": [
    {
      "target_name": "nand_map",
      "sources": ["nand_map.c", "xts_vaes.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
