{
  "targets": [
    {
      "target_name": "nand_map",
      "sources": ["nand_map.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
