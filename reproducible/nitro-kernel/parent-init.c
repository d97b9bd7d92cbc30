/* The /init of the stand-in *parent instance* in reproducible/nitro-enclave.sh: a QEMU microvm
 * with vsock CID 3 beside the nitro-enclave VM (CID 4), both on one vhost-device-vsock whose
 * sibling routing carries enclave <-> parent packets, and a user-mode NIC to the host. It does
 * what a real parent EC2 instance does for an enclave:
 *   - vsock port 9000: the enclave's boot heartbeat (what nitro-cli run-enclave answers): one
 *     byte 0xB7 in, the same byte back; anything else is logged and not answered;
 *   - it runs dcr's own parent-side proxy, unchanged: `/dcr-attest vsock-proxy --port P --to
 *     URL` with P and URL from the command line (parent.port=P parent.to=URL), listening on
 *     AF_VSOCK and forwarding over the NIC (the kernel's ip= configures it) to the service.
 * One line per event on the console ("parent-init: ..."). Static (musl-gcc -static); never
 * part of an image. Runs until the VM is killed. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define HEARTBEAT_PORT 9000
#define HEARTBEAT 0xB7

static void die(const char *what) {
    printf("parent-init: FAIL %s: %s\n", what, strerror(errno));
    for (;;) pause();
}

/* The value of KEY=... on the command line (KEY at its start or after a space), up to the
 * next space. */
static char *arg(const char *cmdline, const char *key) {
    const char *p = cmdline;
    while ((p = strstr(p, key)) && p != cmdline && p[-1] != ' ') p++;
    if (!p) { errno = EINVAL; die(key); }
    p += strlen(key);
    size_t n = strcspn(p, " \n");
    char *v = malloc(n + 1);
    if (!v) die("malloc");
    memcpy(v, p, n);
    v[n] = 0;
    return v;
}

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/proc", 0555);
    mkdir("/tmp", 01777);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY) die("mount /dev");
    if (mount("proc", "/proc", "proc", 0, NULL) != 0) die("mount /proc");
    int con = open("/dev/console", O_WRONLY);
    if (con >= 0) { dup2(con, 1); dup2(con, 2); }
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    char cmdline[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0 || read(fd, cmdline, sizeof cmdline - 1) < 0) die("read /proc/cmdline");
    close(fd);
    char *port = arg(cmdline, "parent.port="), *to = arg(cmdline, "parent.to=");

    int hb = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (hb < 0) die("socket(AF_VSOCK)");
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_ANY;
    a.svm_port = HEARTBEAT_PORT;
    if (bind(hb, (struct sockaddr *)&a, sizeof a) != 0 || listen(hb, 4) != 0) die("bind 9000");

    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        /* The proxy starts with default dispositions, as on a real parent. */
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        char *argv[] = {"/dcr-attest", "vsock-proxy", "--port", port, "--to", to, NULL};
        char *envp[] = {"PATH=/", NULL};
        printf("parent-init: exec /dcr-attest vsock-proxy --port %s --to %s\n", port, to);
        execve(argv[0], argv, envp);
        die("execve /dcr-attest");
    }
    printf("parent-init: heartbeat listener on vsock port %d\n", HEARTBEAT_PORT);
    for (;;) {
        struct sockaddr_vm peer;
        socklen_t len = sizeof peer;
        int c = accept4(hb, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno != EINTR) { printf("parent-init: accept: %s\n", strerror(errno)); sleep(1); }
            continue;
        }
        /* A peer that connects and says nothing holds the next heartbeat 5 s at most. */
        struct timeval tv = {5, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        unsigned char b = 0;
        if (read(c, &b, 1) == 1 && b == HEARTBEAT && write(c, &b, 1) == 1)
            printf("parent-init: heartbeat from cid %u echoed\n", peer.svm_cid);
        else
            printf("parent-init: heartbeat from cid %u: not 0xB7, not answered\n", peer.svm_cid);
        close(c);
    }
}
