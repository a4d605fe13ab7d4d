# Sourced by the end-to-end scripts.

# Prints the first of three consecutive ports on 127.0.0.1 that are free now (found by binding
# them), or nothing.
free_base_port() {
  /usr/bin/python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 3):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", p))
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}
