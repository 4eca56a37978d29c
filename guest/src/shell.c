#include "shell.h"
#include "commands.h"
#include "console.h"
#include "cpu.h"
#include "layout.h"
#include "lib.h"
#include "power.h"
#include "time.h"
#include "ring.h"

#define LINE_MAX 512
#define PROMPT "lifeboat> "

static bool shell_requested;

int cmd_fail(int status, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("error: %s\n", msg);
  return status;
}

bool arg_u64(const char *s, const char *what, u64 *out) {
  if (!s) {
    cmd_fail(STATUS_USAGE, "missing %s", what);
    return false;
  }
  if (!parse_u64(s, out)) {
    cmd_fail(STATUS_USAGE, "%s '%s' is not a number (decimal or 0x hex)", what, s);
    return false;
  }
  return true;
}

static int cmd_help(int argc, char **argv);

static int cmd_poweroff(int argc, char **argv) {
  u64 status = 0;
  if (argc > 1 && !arg_u64(argv[1], "STATUS", &status)) return STATUS_USAGE;
  if (status > 0xFFFFFFFFUL) return cmd_fail(STATUS_USAGE, "STATUS must fit in 32 bits");
  power_off((u32)status);
}

static int cmd_reboot(int argc UNUSED, char **argv UNUSED) { reboot(); }

static int cmd_shell(int argc UNUSED, char **argv UNUSED) {
  shell_requested = true;
  return STATUS_OK;
}

static int cmd_echo(int argc, char **argv) {
  char line[LINE_MAX];
  usize n = 0;
  line[0] = 0;
  for (int i = 1; i < argc; i++) n += (usize)snprintf(line + n, n < sizeof line ? sizeof line - n : 0, "%s%s", i > 1 ? " " : "", argv[i]);
  printf("%s\n", line);
  return STATUS_OK;
}

static int cmd_sleep(int argc, char **argv) {
  u64 ms;
  if (argc != 2) return cmd_fail(STATUS_USAGE, "usage: sleep MILLISECONDS");
  if (!arg_u64(argv[1], "MILLISECONDS", &ms)) return STATUS_USAGE;
  u64 end = time_us() + ms * 1000;
  while (time_us() < end) {
    if (console_interrupted()) return cmd_fail(STATUS_INTERRUPTED, "interrupted");
    wait_for_interrupt();
  }
  return STATUS_OK;
}

struct command {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *usage;
};

static const struct command commands[] = {
    {"help", cmd_help, "help                             list commands"},
    {"info", cmd_info, "info                             CPUs, memory, disks"},
    {"disk", cmd_disk, "disk write|verify I OFFSET LENGTH SEED | disk read I OFFSET LENGTH | disk bench I"},
    {"mem", cmd_mem, "mem dirty PAGES [RATE]           dirty PAGES distinct pages (RATE pages/s until Ctrl-C)"},
    {"counter", cmd_counter, "counter                          print 'counter N' 10 times a second until Ctrl-C"},
    {"ledger", cmd_ledger, "ledger run [RATE] | ledger check | ledger format   [--disk I]"},
    {"echo", cmd_echo, "echo TEXT                        print TEXT"},
    {"sleep", cmd_sleep, "sleep MILLISECONDS"},
    {"poweroff", cmd_poweroff, "poweroff [STATUS]                power off with exit status STATUS"},
    {"reboot", cmd_reboot, "reboot                           reset the machine"},
    {"shell", cmd_shell, "shell                            (in lifeboat.exec) continue to the interactive shell"},
};

static int cmd_help(int argc UNUSED, char **argv UNUSED) {
  for (usize i = 0; i < ARRAY_SIZE(commands); i++) printf("  %s\n", commands[i].usage);
  return STATUS_OK;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

int shell_execute(char *line) {
  char *argv[MAX_ARGS + 1];
  int argc = 0;
  for (char *p = line; *p;) {
    while (is_space(*p)) *p++ = 0;
    if (!*p) break;
    if (argc == MAX_ARGS) return cmd_fail(STATUS_USAGE, "too many arguments (at most %d)", MAX_ARGS);
    argv[argc++] = p;
    while (*p && !is_space(*p)) p++;
  }
  argv[argc] = NULL;
  if (!argc) return STATUS_OK;
  console_clear_interrupt();
  for (usize i = 0; i < ARRAY_SIZE(commands); i++)
    if (strcmp(argv[0], commands[i].name) == 0) return commands[i].fn(argc, argv);
  return cmd_fail(STATUS_UNKNOWN_COMMAND, "unknown command '%s'", argv[0]);
}

void shell_run_exec(const char *script) {
  char cmd[LINE_MAX];
  const char *p = script;
  bool last_was_shell = false;
  while (*p) {
    usize n = 0;
    while (*p && *p != ';' && *p != '\n') {
      if (n + 1 < sizeof cmd) cmd[n++] = *p;
      p++;
    }
    if (*p) p++;
    cmd[n] = 0;
    char *c = cmd;
    while (is_space(*c)) c++;
    for (usize e = strlen(c); e > 0 && is_space(c[e - 1]); e--) c[e - 1] = 0;
    if (!*c) continue;
    printf("exec> %s\n", c);
    shell_requested = false;
    int status = shell_execute(c);
    console_clear_interrupt();
    last_was_shell = shell_requested;
    if (status != STATUS_OK) power_off((u32)status);
  }
  if (!last_was_shell) power_off(STATUS_OK);
}

static int read_char(void) {
  for (;;) {
    u64 seen = irq_event_count(); /* read before checking, so an interrupt in between wakes us */
    int c = console_try_getc();
    if (c >= 0) return c;
    if (console_interrupted()) {
      console_clear_interrupt();
      return 0x03;
    }
    wait_event(seen);
  }
}

void shell_interactive(void) {
  char line[LINE_MAX];
  for (;;) {
    console_write(PROMPT);
    usize n = 0;
    bool cancelled = false;
    static bool last_was_cr;
    for (;;) {
      int c = read_char();
      if (c == '\n' && last_was_cr) { /* the LF of a CR LF pair */
        last_was_cr = false;
        continue;
      }
      last_was_cr = c == '\r';
      if (c == '\r' || c == '\n') {
        console_write("\n");
        break;
      }
      if (c == 0x03) {
        console_write("^C\n");
        cancelled = true;
        break;
      }
      if (c == 0x7F || c == 0x08) {
        if (n) {
          n--;
          console_write("\b \b");
        }
        continue;
      }
      if (c < 0x20 || c > 0x7E || n + 1 >= sizeof line) continue;
      line[n++] = (char)c;
      char echo[2] = {(char)c, 0};
      console_write(echo);
    }
    if (cancelled) continue;
    line[n] = 0;
    shell_execute(line);
    console_clear_interrupt(); /* the Ctrl-C that ended the command must not cancel the next line */
  }
}
