/* The log, warning and panic callbacks of VixDiskLib_InitEx take a
 * printf-style format and a va_list, which stable Rust cannot build.
 * These few lines do. Hidden: not part of the library's ABI. */
#include <stdarg.h>
#include <stddef.h>

typedef void (*vixrs_log_func)(const char *fmt, va_list args);

static void vixrs_call(vixrs_log_func f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    f(fmt, ap);
    va_end(ap);
}

__attribute__((visibility("hidden"))) void vixrs_log(vixrs_log_func f, const char *msg)
{
    if (f != NULL && msg != NULL) {
        vixrs_call(f, "%s\n", msg);
    }
}
