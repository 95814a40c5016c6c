def spawn(path: bytes, argv: list[bytes], envp: list[bytes], pid_names: list[bytes],
          fd_pairs: list[tuple[int, int]], cwd: bytes | None, nofile: int = -1,
          limits: list[tuple[int, int, int]] | None = None, umask: int = -1,
          nice: int = 100, oom_score_adj: int = -10000) -> int: ...
