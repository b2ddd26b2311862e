"""Drive a drplane command on a pseudo-terminal: answer each password prompt with the password
given on stdin, and print everything the terminal showed. Usage: prompt.py ARGV... < password"""
import os
import pty
import sys
import termios
import time

password = sys.stdin.readline().rstrip("\n").encode()
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
seen = b""
answered = 0
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    # Answer each prompt once ("password: " and "again: ").
    prompts = seen.count(b"password: ") + seen.count(b"again: ")
    while answered < prompts:
        # Type only once the program has turned echo off (as a person would see no echo):
        # typing earlier would be echoed by the terminal, not by the program.
        deadline = time.monotonic() + 10
        while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
            time.sleep(0.005)
        os.write(fd, password + b"\n")
        answered += 1
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
