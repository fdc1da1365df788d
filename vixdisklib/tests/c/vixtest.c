/*
 * A C client of libvixDiskLib.so.8, driven by vixdisklib/tests/c_abi.rs.
 * It follows nbdkit's vddk plugin call sequence (InitEx(6, 5, ...),
 * AllocateConnectParams, ConnectEx, Open, GetTransportMode, GetInfo,
 * ReadAsync / WriteAsync with Wait, Flush, QueryAllocatedBlocks(0, 128,
 * 128), Close, Disconnect, Exit) and checks the library's C contract.
 * The Rust test compares what it writes with qemu-img.
 *
 * Usage:
 *   vixtest read  CONN OUT.raw        whole disk through ReadAsync
 *   vixtest write CONN IN.raw SECTOR  WriteAsync IN at SECTOR, Flush
 *   vixtest create PATH SECTORS TYPE  Create, write across a grain, metadata
 *   vixtest errors PATH               error codes and texts
 *   vixtest clone CONN DST TYPE       Clone to a local disk of TYPE
 *   vixtest child PATH CHILD          CreateChild, write through the child
 *   vixtest single PATH OUT.raw       open PATH with OPEN_SINGLE_LINK: numLinks,
 *                                     the link alone to OUT, its blocks; a
 *                                     writable single-link open is refused
 *   vixtest shrink PATH               Shrink / Defragment on an open handle
 *   vixtest threads PATH N            N threads, one handle each
 *   vixtest loop PATH N               open/read/close N times (valgrind)
 *   vixtest hold CONN                 open, say "held MODE", wait to be killed
 *   vixtest cleanup CONN              Cleanup, print "cleanup CLEANED REMAINING"
 *   vixtest atexit CONN               EndAccess from an atexit handler (the
 *                                     way Bareos's dumper calls it); prints
 *                                     "endaccess CODE"; must exit 0
 *   vixtest opencode CONN             Open; print "open CODE"
 *   vixtest lengths PATH              length-only metadata queries
 *   vixtest meta CONN KEY VALUE       list keys, GetInfo, WriteMetadata, and
 *                                     read it back after reopening
 *   vixtest createtypes DIR           what Create and Open do with the
 *                                     VMFS sparse and stream-optimized types
 *   vixtest asyncerr PATH             a ReadAsync failing on a worker: the
 *                                     caller's GetErrorText has the detail
 * VIXTEST_CONFIG, when set, is the InitEx configuration file;
 * VIXTEST_SNAPSHOT, the snapshotRef given to ConnectEx.
 * CONN is "local:PATH" or
 *   "remote:HOST:PORT:THUMBPRINT:USER:PASSWORD:VM:TRANSPORTS:DISKPATH"
 * with ',' in place of ':' inside the thumbprint and '+' in place of ':'
 * between transports.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vixDiskLib.h"

/* The header's layouts are VDDK's (x86-64). */
_Static_assert(sizeof(VixDiskLibConnectParams) == 128, "ConnectParams size");
_Static_assert(offsetof(VixDiskLibConnectParams, credType) == 32, "credType");
_Static_assert(offsetof(VixDiskLibConnectParams, creds) == 40, "creds");
_Static_assert(offsetof(VixDiskLibConnectParams, port) == 64, "port");
_Static_assert(offsetof(VixDiskLibConnectParams, nfcHostPort) == 68, "nfc");
_Static_assert(offsetof(VixDiskLibConnectParams, reserved3) == 72, "res3");
_Static_assert(offsetof(VixDiskLibConnectParams, reserved4) == 80, "res4");
_Static_assert(offsetof(VixDiskLibConnectParams, reserved5) == 88, "res5");
_Static_assert(offsetof(VixDiskLibConnectParams, spec) == 96, "spec");
_Static_assert(offsetof(VixDiskLibConnectParams, specType) == 120, "specType");
_Static_assert(sizeof(VixDiskLibInfo) == 64, "Info size");
_Static_assert(offsetof(VixDiskLibInfo, physGeo) == 12, "physGeo");
_Static_assert(offsetof(VixDiskLibInfo, capacity) == 24, "capacity");
_Static_assert(offsetof(VixDiskLibInfo, adapterType) == 32, "adapterType");
_Static_assert(offsetof(VixDiskLibInfo, numLinks) == 36, "numLinks");
_Static_assert(offsetof(VixDiskLibInfo, parentFileNameHint) == 40, "hint");
_Static_assert(offsetof(VixDiskLibInfo, uuid) == 48, "uuid");
_Static_assert(offsetof(VixDiskLibInfo, logicalSectorSize) == 56, "lss");
_Static_assert(offsetof(VixDiskLibInfo, physicalSectorSize) == 60, "pss");
_Static_assert(sizeof(VixDiskLibCreateParams) == 32, "CreateParams size");
_Static_assert(offsetof(VixDiskLibCreateParams, hwVersion) == 8, "hw");
_Static_assert(offsetof(VixDiskLibCreateParams, capacity) == 16, "cap");
_Static_assert(offsetof(VixDiskLibCreateParams, logicalSectorSize) == 24, "l");
_Static_assert(offsetof(VixDiskLibCreateParams, physicalSectorSize) == 28, "p");
_Static_assert(offsetof(VixDiskLibBlockList, blocks) == 8, "blocks");

#define CHUNK_SECTORS 128 /* 64 KiB, nbdkit's usual request size */
#define IN_FLIGHT 8

static int failures;

#define CHECK(cond, ...)                                                      \
   do {                                                                       \
      if (!(cond)) {                                                          \
         fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
         fprintf(stderr, __VA_ARGS__);                                        \
         fprintf(stderr, "\n");                                               \
         failures++;                                                          \
      }                                                                       \
   } while (0)

#define EXPECT(call, code)                                                    \
   do {                                                                       \
      VixError e_ = (call);                                                   \
      CHECK(VIX_ERROR_CODE(e_) == (code), "%s returned %" PRIu64              \
            ", expected %d (%s)", #call, e_, (int)(code), text(e_));          \
   } while (0)

static char text_buf[512];

static const char *text(VixError e)
{
   char *t = VixDiskLib_GetErrorText(e, NULL);
   snprintf(text_buf, sizeof text_buf, "%s", t ? t : "(null)");
   VixDiskLib_FreeErrorText(t);
   return text_buf;
}

static void log_fn(const char *fmt, va_list args)
{
   fprintf(stderr, "vixlog: ");
   vfprintf(stderr, fmt, args);
}

static void info_fn(const char *fmt, va_list args)
{
   fprintf(stderr, "vixinfo: ");
   vfprintf(stderr, fmt, args);
}

static void die(const char *what, VixError e)
{
   fprintf(stderr, "FATAL %s: %" PRIu64 " %s\n", what, e, text(e));
   exit(2);
}

static void init(void)
{
   VixError e = VixDiskLib_InitEx(6, 5, info_fn, log_fn, log_fn, NULL,
                                  getenv("VIXTEST_CONFIG"));
   if (e != VIX_OK)
      die("InitEx", e);
}

/* ------------------------------------------------------------------ */

struct conn {
   VixDiskLibConnectParams *params;
   VixDiskLibConnection conn;
   char *path;
   char *transports;
   char *spec; /* owns the strings the params point into */
   int local;
};

static char *field(char **s)
{
   char *f = strsep(s, ":");
   if (f == NULL) {
      fprintf(stderr, "bad connection spec\n");
      exit(2);
   }
   return f;
}

static void connect_spec(struct conn *c, const char *spec_in, Bool read_only)
{
   char *spec = strdup(spec_in), *s = spec;
   memset(c, 0, sizeof *c);
   c->params = VixDiskLib_AllocateConnectParams();
   CHECK(c->params != NULL, "AllocateConnectParams");
   const char *kind = field(&s);
   if (strcmp(kind, "local") == 0) {
      c->local = 1;
      c->path = strdup(s);
   } else {
      char *host = field(&s), *port = field(&s), *thumb = field(&s);
      char *user = field(&s), *pass = field(&s), *vm = field(&s);
      c->transports = strdup(field(&s));
      c->path = strdup(s);
      for (char *p = thumb; *p; p++)
         if (*p == ',')
            *p = ':';
      for (char *p = c->transports; *p; p++)
         if (*p == '+')
            *p = ':';
      /* Like nbdkit: the struct is the library's, the strings stay the
       * caller's (FreeConnectParams must not free them). */
      c->params->serverName = host;
      c->params->port = (uint32_t)atoi(port);
      c->params->thumbPrint = thumb;
      c->params->credType = VIXDISKLIB_CRED_UID;
      c->params->creds.uid.userName = user;
      c->params->creds.uid.password = pass;
      c->params->vmxSpec = vm;
      c->params->specType = VIXDISKLIB_SPEC_VMX;
   }
   c->spec = spec;
   VixError e = VixDiskLib_ConnectEx(c->params, read_only,
                                     getenv("VIXTEST_SNAPSHOT"), c->transports,
                                     &c->conn);
   if (e != VIX_OK)
      die("ConnectEx", e);
}

static void disconnect(struct conn *c)
{
   EXPECT(VixDiskLib_Disconnect(c->conn), VIX_OK);
   VixDiskLib_FreeConnectParams(c->params);
   free(c->path);
   free(c->transports);
   free(c->spec);
}

/* ------------------------------------------------------------ async */

struct request {
   atomic_int done;
   atomic_int calls;
   VixError result;
};

static void completion(void *data, VixError result)
{
   struct request *r = data;
   r->result = result;
   atomic_fetch_add(&r->calls, 1);
   atomic_store(&r->done, 1);
}

/* Reads or writes [first, first+count) in CHUNK_SECTORS requests with up
 * to IN_FLIGHT queued, waiting with VixDiskLib_Wait between batches. */
static void async_io(VixDiskLibHandle h, uint64_t first, uint64_t count,
                     uint8_t *buf, int write)
{
   struct request reqs[IN_FLIGHT];
   uint64_t s = 0;
   while (s < count) {
      int n = 0;
      for (; n < IN_FLIGHT && s < count; n++) {
         uint64_t len = count - s < CHUNK_SECTORS ? count - s : CHUNK_SECTORS;
         memset(&reqs[n], 0, sizeof reqs[n]);
         VixError e =
            write ? VixDiskLib_WriteAsync(h, first + s, len, buf + s * 512,
                                          completion, &reqs[n])
                  : VixDiskLib_ReadAsync(h, first + s, len, buf + s * 512,
                                         completion, &reqs[n]);
         CHECK(e == VIX_ASYNC, "%s returned %" PRIu64 " (%s)",
               write ? "WriteAsync" : "ReadAsync", e, text(e));
         s += len;
      }
      EXPECT(VixDiskLib_Wait(h), VIX_OK);
      for (int i = 0; i < n; i++) {
         CHECK(atomic_load(&reqs[i].done) == 1, "request %d not done", i);
         CHECK(atomic_load(&reqs[i].calls) == 1, "callback called %d times",
               atomic_load(&reqs[i].calls));
         CHECK(reqs[i].result == VIX_OK, "request failed: %s",
               text(reqs[i].result));
      }
   }
}

static VixDiskLibHandle open_disk(struct conn *c, uint32_t flags)
{
   VixDiskLibHandle h = NULL;
   VixError e = VixDiskLib_Open(c->conn, c->path, flags, &h);
   if (e != VIX_OK)
      die("Open", e);
   return h;
}

static uint64_t capacity_of(VixDiskLibHandle h)
{
   VixDiskLibInfo *info = NULL;
   VixError e = VixDiskLib_GetInfo(h, &info);
   if (e != VIX_OK)
      die("GetInfo", e);
   uint64_t cap = info->capacity;
   CHECK(info->logicalSectorSize == 512 && info->physicalSectorSize == 512,
         "sector sizes %u/%u", info->logicalSectorSize,
         info->physicalSectorSize);
   CHECK(info->biosGeo.heads > 0 && info->biosGeo.sectors > 0,
         "bios geometry");
   VixDiskLib_FreeInfo(info);
   return cap;
}

static void print_extents(VixDiskLibHandle h, uint64_t cap)
{
   VixDiskLibBlockList *bl = NULL;
   /* nbdkit's probe. */
   VixError e = VixDiskLib_QueryAllocatedBlocks(h, 0, 128, 128, &bl);
   CHECK(e == VIX_OK, "QueryAllocatedBlocks probe: %s", text(e));
   if (e == VIX_OK)
      EXPECT(VixDiskLib_FreeBlockList(bl), VIX_OK);
   uint64_t whole = cap / 128 * 128;
   if (whole == 0)
      return;
   e = VixDiskLib_QueryAllocatedBlocks(h, 0, whole, 128, &bl);
   CHECK(e == VIX_OK, "QueryAllocatedBlocks: %s", text(e));
   if (e != VIX_OK)
      return;
   for (uint32_t i = 0; i < bl->numBlocks; i++)
      printf("block %" PRIu64 " %" PRIu64 "\n", bl->blocks[i].offset,
             bl->blocks[i].length);
   EXPECT(VixDiskLib_FreeBlockList(bl), VIX_OK);
}

static int cmd_read(const char *spec, const char *out)
{
   init();
   struct conn c;
   connect_spec(&c, spec, TRUE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   const char *mode = VixDiskLib_GetTransportMode(h);
   printf("transport %s\n", mode ? mode : "(null)");
   uint64_t cap = capacity_of(h);
   printf("capacity %" PRIu64 "\n", cap);
   uint8_t *buf = malloc(cap * 512 + 1);
   async_io(h, 0, cap, buf, 0);
   FILE *f = fopen(out, "wb");
   CHECK(f != NULL && fwrite(buf, 512, cap, f) == cap, "writing %s", out);
   if (f)
      fclose(f);
   free(buf);
   print_extents(h, cap);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static uint8_t *slurp(const char *path, uint64_t *len)
{
   FILE *f = fopen(path, "rb");
   if (!f) {
      perror(path);
      exit(2);
   }
   fseek(f, 0, SEEK_END);
   long n = ftell(f);
   fseek(f, 0, SEEK_SET);
   uint8_t *b = malloc((size_t)n + 1);
   if (fread(b, 1, (size_t)n, f) != (size_t)n) {
      perror(path);
      exit(2);
   }
   fclose(f);
   *len = (uint64_t)n;
   return b;
}

static int cmd_write(const char *spec, const char *in, uint64_t sector)
{
   init();
   uint64_t len;
   uint8_t *data = slurp(in, &len);
   CHECK(len % 512 == 0, "input not whole sectors");
   struct conn c;
   connect_spec(&c, spec, FALSE);
   VixDiskLibHandle h = open_disk(&c, 0);
   async_io(h, sector, len / 512, data, 1);
   /* nbdkit's flush: Wait, then Flush. */
   EXPECT(VixDiskLib_Wait(h), VIX_OK);
   EXPECT(VixDiskLib_Flush(h), VIX_OK);
   uint8_t *back = malloc(len + 1);
   EXPECT(VixDiskLib_Read(h, sector, len / 512, back), VIX_OK);
   CHECK(memcmp(back, data, len) == 0, "read back differs");
   free(back);
   free(data);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

/* ----------------------------------------------------------- create */

static int progress_calls;
static Bool progress(void *data, int percent)
{
   (void)data;
   (void)percent;
   progress_calls++;
   return TRUE;
}

static int cmd_create(const char *path, uint64_t sectors, int type)
{
   init();
   struct conn c;
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   connect_spec(&c, spec, FALSE);
   VixDiskLibCreateParams cp;
   memset(&cp, 0, sizeof cp);
   cp.diskType = (VixDiskLibDiskType)type;
   cp.adapterType = VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
   cp.hwVersion = VIXDISKLIB_HWVERSION_ESX65;
   cp.capacity = sectors;
   cp.logicalSectorSize = 512;
   cp.physicalSectorSize = 512;
   EXPECT(VixDiskLib_Create(c.conn, path, &cp, progress, NULL), VIX_OK);
   /* A second create over the file refuses. */
   EXPECT(VixDiskLib_Create(c.conn, path, &cp, NULL, NULL),
          VIX_E_FILE_ALREADY_EXISTS);

   VixDiskLibHandle h = open_disk(&c, 0);
   CHECK(capacity_of(h) == sectors, "capacity");
   /* 16 sectors across the first grain boundary (sector 128), then a
    * single sector at the very end. */
   uint8_t buf[16 * 512];
   for (size_t i = 0; i < sizeof buf; i++)
      buf[i] = (uint8_t)(i * 7 + 3);
   EXPECT(VixDiskLib_Write(h, 120, 16, buf), VIX_OK);
   EXPECT(VixDiskLib_Write(h, sectors - 1, 1, buf), VIX_OK);
   uint8_t back[16 * 512];
   EXPECT(VixDiskLib_Read(h, 120, 16, back), VIX_OK);
   CHECK(memcmp(buf, back, sizeof buf) == 0, "read back across grain");

   /* Metadata: write, read, size query, keys list. */
   EXPECT(VixDiskLib_WriteMetadata(h, "vixtest.key", "hello world"), VIX_OK);
   size_t need = 0;
   EXPECT(VixDiskLib_ReadMetadata(h, "vixtest.key", NULL, 0, &need),
          VIX_E_BUFFER_TOOSMALL);
   CHECK(need == strlen("hello world") + 1, "required %zu", need);
   char val[64] = {0};
   EXPECT(VixDiskLib_ReadMetadata(h, "vixtest.key", val, sizeof val, &need),
          VIX_OK);
   CHECK(strcmp(val, "hello world") == 0, "value '%s'", val);
   EXPECT(VixDiskLib_ReadMetadata(h, "no.such.key", val, sizeof val, &need),
          VIX_E_DISK_KEY_NOTFOUND);
   EXPECT(VixDiskLib_GetMetadataKeys(h, NULL, 0, &need),
          VIX_E_BUFFER_TOOSMALL);
   char *keys = calloc(1, need);
   EXPECT(VixDiskLib_GetMetadataKeys(h, keys, need, &need), VIX_OK);
   int found = 0;
   for (char *k = keys; *k; k += strlen(k) + 1)
      if (strcmp(k, "vixtest.key") == 0)
         found = 1;
   CHECK(found, "vixtest.key not in GetMetadataKeys");
   free(keys);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

/* ----------------------------------------------------------- errors */

static int cmd_errors(const char *path)
{
   /* Before InitEx: a clear failure, not a crash. */
   VixDiskLibConnection conn = NULL;
   VixDiskLibConnectParams local;
   memset(&local, 0, sizeof local);
   CHECK(VixDiskLib_ConnectEx(&local, TRUE, NULL, NULL, &conn) != VIX_OK,
         "ConnectEx before InitEx succeeded");

   /* The InitEx configuration file: known keys, an unknown one (warned,
    * not fatal), and a missing file (an error). */
   char cfg[] = "/tmp/vixtest-config-XXXXXX";
   int fd = mkstemp(cfg);
   CHECK(fd >= 0, "mkstemp");
   const char *text_cfg =
      "# comment\n"
      "tmpDirectory = \"/tmp\"\n"
      "vixDiskLib.nfc.ReadTimeoutMs = 60000\n"
      "vixDiskLib.no.such.key = 1\n";
   CHECK(write(fd, text_cfg, strlen(text_cfg)) == (ssize_t)strlen(text_cfg),
         "write config");
   close(fd);
   EXPECT(VixDiskLib_InitEx(6, 5, log_fn, log_fn, log_fn, NULL, cfg), VIX_OK);
   VixDiskLib_Exit();
   unlink(cfg);
   CHECK(VixDiskLib_InitEx(6, 5, log_fn, log_fn, log_fn, NULL, cfg) != VIX_OK,
         "InitEx with a missing configuration file succeeded");

   /* init -> exit -> init. */
   init();
   VixDiskLib_Exit();
   init();

   EXPECT(VixDiskLib_ConnectEx(NULL, TRUE, NULL, NULL, &conn),
          VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_ConnectEx(&local, TRUE, NULL, NULL, NULL),
          VIX_E_INVALID_ARG);
   local.specType = VIXDISKLIB_SPEC_VSTORAGE_OBJECT;
   EXPECT(VixDiskLib_ConnectEx(&local, TRUE, NULL, NULL, &conn),
          VIX_E_NOT_SUPPORTED);
   local.specType = VIXDISKLIB_SPEC_VMX;
   EXPECT(VixDiskLib_ConnectEx(&local, TRUE, NULL, NULL, &conn), VIX_OK);

   VixDiskLibHandle h = NULL;
   EXPECT(VixDiskLib_Open(conn, "/nonexistent/dir/disk.vmdk", 0, &h),
          VIX_E_FILE_NOT_FOUND);
   EXPECT(VixDiskLib_Open(conn, NULL, 0, &h), VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_Open(conn, path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, NULL),
          VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_Open((VixDiskLibConnection)(uintptr_t)0xdead, path, 0,
                          &h),
          VIX_E_INVALID_HANDLE);
   EXPECT(VixDiskLib_Open(conn, path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, &h),
          VIX_OK);

   uint64_t cap = capacity_of(h);
   uint8_t buf[1024];
   EXPECT(VixDiskLib_Read(h, cap, 1, buf), VIX_E_DISK_OUTOFRANGE);
   EXPECT(VixDiskLib_Read(h, UINT64_MAX, 2, buf), VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_Read(h, 0, 1, NULL), VIX_E_INVALID_ARG);
   CHECK(VixDiskLib_Write(h, 0, 1, buf) != VIX_OK,
         "write on a read-only handle succeeded");
   EXPECT(VixDiskLib_ReadAsync(h, 0, 1, buf, NULL, NULL), VIX_E_INVALID_ARG);
   VixDiskLibBlockList *bl = NULL;
   EXPECT(VixDiskLib_QueryAllocatedBlocks(h, 0, 128, 64, &bl),
          VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_FreeBlockList(NULL), VIX_E_INVALID_ARG);
   VixDiskLibInfo *info = NULL;
   EXPECT(VixDiskLib_GetInfo(h, NULL), VIX_E_INVALID_ARG);
   EXPECT(VixDiskLib_GetInfo(h, &info), VIX_OK);
   VixDiskLib_FreeInfo(info);
   VixDiskLib_FreeInfo(NULL);

   /* Close twice: the second is an invalid handle, never a crash. */
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   EXPECT(VixDiskLib_Close(h), VIX_E_INVALID_HANDLE);
   EXPECT(VixDiskLib_Read(h, 0, 1, buf), VIX_E_INVALID_HANDLE);
   CHECK(VixDiskLib_GetTransportMode(h) == NULL, "mode of a closed handle");
   EXPECT(VixDiskLib_Wait(h), VIX_E_INVALID_HANDLE);
   EXPECT(VixDiskLib_Disconnect(conn), VIX_OK);
   EXPECT(VixDiskLib_Disconnect(conn), VIX_E_INVALID_HANDLE);

   /* Error texts: every code has one, unknown ones too. */
   VixError codes[] = {VIX_OK, VIX_E_FAIL, VIX_E_INVALID_ARG,
                       VIX_E_FILE_NOT_FOUND, VIX_E_INVALID_HANDLE,
                       VIX_E_DISK_OUTOFRANGE, VIX_ASYNC, 54321};
   for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
      char *t = VixDiskLib_GetErrorText(codes[i], NULL);
      CHECK(t != NULL && strlen(t) > 0, "no text for %" PRIu64, codes[i]);
      VixDiskLib_FreeErrorText(t);
   }
   char *t = VixDiskLib_GetErrorText(VIX_E_FILE_NOT_FOUND, "en");
   CHECK(t && strcasestr(t, "not found"), "text '%s'", t ? t : "");
   VixDiskLib_FreeErrorText(t);
   VixDiskLib_FreeErrorText(NULL);

   const char *modes = VixDiskLib_ListTransportModes();
   CHECK(modes && strcmp(modes, "file:san:hotadd:nbdssl:nbd") == 0,
         "transport modes '%s'", modes ? modes : "");
   VixDiskLib_Exit();
   VixDiskLib_Exit();
   /* After Exit handles are gone. */
   EXPECT(VixDiskLib_Close(h), VIX_E_INVALID_HANDLE);
   return failures != 0;
}

/* ------------------------------------------------------------ clone */

static int cmd_clone(const char *src_spec, const char *dst, int type)
{
   init();
   struct conn src, local;
   connect_spec(&src, src_spec, TRUE);
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", dst);
   connect_spec(&local, spec, FALSE);
   VixDiskLibCreateParams cp;
   memset(&cp, 0, sizeof cp);
   cp.diskType = (VixDiskLibDiskType)type;
   cp.adapterType = VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
   cp.hwVersion = VIXDISKLIB_HWVERSION_ESX65;
   progress_calls = 0;
   EXPECT(VixDiskLib_Clone(local.conn, dst, src.conn, src.path, &cp, progress,
                           NULL, TRUE),
          VIX_OK);
   CHECK(progress_calls > 0, "no progress reported");
   EXPECT(VixDiskLib_Clone(local.conn, dst, src.conn, src.path, &cp, NULL,
                           NULL, FALSE),
          VIX_E_FILE_ALREADY_EXISTS);
   disconnect(&local);
   disconnect(&src);
   VixDiskLib_Exit();
   return failures != 0;
}

/* A child of PATH at CHILD, then 16 sectors written through the child. */
static int cmd_child(const char *path, const char *child)
{
   init();
   struct conn c;
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   connect_spec(&c, spec, FALSE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   EXPECT(VixDiskLib_CreateChild(h, child, VIXDISKLIB_DISK_MONOLITHIC_SPARSE,
                                 NULL, NULL),
          VIX_OK);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   VixDiskLibHandle ch = NULL;
   EXPECT(VixDiskLib_Open(c.conn, child, 0, &ch), VIX_OK);
   VixDiskLibInfo *info = NULL;
   EXPECT(VixDiskLib_GetInfo(ch, &info), VIX_OK);
   if (info) {
      CHECK(info->numLinks == 2, "numLinks %d", info->numLinks);
      CHECK(info->parentFileNameHint != NULL, "no parent hint");
      VixDiskLib_FreeInfo(info);
   }
   uint8_t buf[16 * 512];
   for (size_t i = 0; i < sizeof buf; i++)
      buf[i] = (uint8_t)(i * 13 + 1);
   EXPECT(VixDiskLib_Write(ch, 2040, 16, buf), VIX_OK);
   EXPECT(VixDiskLib_Close(ch), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

/* ----------------------------------------------------------- shrink */

/* A delta opened alone, as backup software reads a snapshot's own
 * grains: one link, its blocks, zeros elsewhere. */
static int cmd_single(const char *path, const char *out)
{
   init();
   struct conn c;
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   connect_spec(&c, spec, FALSE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY |
                                         VIXDISKLIB_FLAG_OPEN_SINGLE_LINK);
   VixDiskLibInfo *info = NULL;
   EXPECT(VixDiskLib_GetInfo(h, &info), VIX_OK);
   if (info) {
      printf("links %d\n", info->numLinks);
      printf("hint %s\n", info->parentFileNameHint ? info->parentFileNameHint
                                                    : "(none)");
      VixDiskLib_FreeInfo(info);
   }
   uint64_t cap = capacity_of(h);
   uint8_t *buf = malloc(cap * 512 + 1);
   async_io(h, 0, cap, buf, 0);
   FILE *f = fopen(out, "wb");
   CHECK(f != NULL && fwrite(buf, 512, cap, f) == cap, "writing %s", out);
   if (f)
      fclose(f);
   free(buf);
   print_extents(h, cap);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   VixDiskLibHandle w = NULL;
   VixError e = VixDiskLib_Open(c.conn, path, VIXDISKLIB_FLAG_OPEN_SINGLE_LINK,
                                &w);
   printf("writable %" PRIu64 "\n", VIX_ERROR_CODE(e));
   if (e == VIX_OK)
      EXPECT(VixDiskLib_Close(w), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static int cmd_shrink(const char *path)
{
   init();
   struct conn c;
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   connect_spec(&c, spec, FALSE);
   VixDiskLibHandle h = open_disk(&c, 0);
   uint64_t cap = capacity_of(h);
   uint8_t *before = malloc(cap * 512), *after = malloc(cap * 512);
   EXPECT(VixDiskLib_Read(h, 0, cap, before), VIX_OK);

   /* A second handle on the file: busy. */
   VixDiskLibHandle other = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   EXPECT(VixDiskLib_Shrink(h, NULL, NULL), VIX_E_OBJECT_IS_BUSY);
   EXPECT(VixDiskLib_Defragment(other, NULL, NULL), VIX_E_FILE_READ_ONLY);
   EXPECT(VixDiskLib_Close(other), VIX_OK);

   /* Queued writes are finished before the file is rewritten. */
   struct request r;
   memset(&r, 0, sizeof r);
   uint8_t grain[128 * 512];
   memset(grain, 0x77, sizeof grain);
   memcpy(before + 256 * 512, grain, sizeof grain);
   EXPECT(VixDiskLib_WriteAsync(h, 256, 128, grain, completion, &r),
          VIX_ASYNC);
   progress_calls = 0;
   EXPECT(VixDiskLib_Shrink(h, progress, NULL), VIX_OK);
   CHECK(atomic_load(&r.calls) == 1 && r.result == VIX_OK, "queued write");
   CHECK(progress_calls > 0, "no progress reported");
   EXPECT(VixDiskLib_Defragment(h, NULL, NULL), VIX_OK);
   /* The same handle still reads the same bytes. */
   EXPECT(VixDiskLib_Read(h, 0, cap, after), VIX_OK);
   CHECK(memcmp(before, after, cap * 512) == 0, "data changed by Shrink");
   free(before);
   free(after);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

/* ---------------------------------------------------------- threads */

struct worker {
   VixDiskLibConnection conn;
   const char *path;
   uint64_t sum;
   int failed;
};

static uint64_t fnv(const uint8_t *b, size_t n)
{
   uint64_t h = 1469598103934665603ULL;
   for (size_t i = 0; i < n; i++)
      h = (h ^ b[i]) * 1099511628211ULL;
   return h;
}

static void *worker_main(void *arg)
{
   struct worker *w = arg;
   VixDiskLibHandle h = NULL;
   VixError e =
      VixDiskLib_Open(w->conn, w->path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, &h);
   if (e != VIX_OK) {
      w->failed = 1;
      return NULL;
   }
   uint64_t cap = capacity_of(h);
   uint8_t *buf = malloc(cap * 512 + 1);
   async_io(h, 0, cap, buf, 0);
   w->sum = fnv(buf, cap * 512);
   free(buf);
   if (VixDiskLib_Close(h) != VIX_OK)
      w->failed = 1;
   return NULL;
}

static int cmd_threads(const char *path, int n)
{
   init();
   struct conn c;
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   connect_spec(&c, spec, TRUE);
   struct worker *ws = calloc((size_t)n, sizeof *ws);
   pthread_t *ts = calloc((size_t)n, sizeof *ts);
   for (int i = 0; i < n; i++) {
      ws[i].conn = c.conn;
      ws[i].path = c.path;
      pthread_create(&ts[i], NULL, worker_main, &ws[i]);
   }
   for (int i = 0; i < n; i++) {
      pthread_join(ts[i], NULL);
      CHECK(!ws[i].failed, "worker %d failed", i);
      CHECK(ws[i].sum == ws[0].sum, "worker %d read different data", i);
   }
   printf("checksum %016" PRIx64 "\n", ws[0].sum);
   free(ws);
   free(ts);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static int cmd_loop(const char *path, int n)
{
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   for (int i = 0; i < n; i++) {
      init();
      struct conn c;
      connect_spec(&c, spec, FALSE);
      VixDiskLibHandle h = open_disk(&c, 0);
      uint64_t cap = capacity_of(h);
      uint8_t *buf = malloc(cap * 512 + 1);
      async_io(h, 0, cap, buf, 0);
      async_io(h, 0, 256, buf, 1);
      EXPECT(VixDiskLib_Flush(h), VIX_OK);
      print_extents(h, cap);
      size_t need = 0;
      VixDiskLib_GetMetadataKeys(h, NULL, 0, &need);
      char *t = VixDiskLib_GetErrorText(VIX_E_FAIL, NULL);
      VixDiskLib_FreeErrorText(t);
      free(buf);
      EXPECT(VixDiskLib_Close(h), VIX_OK);
      disconnect(&c);
      VixDiskLib_Exit();
   }
   return failures != 0;
}

/* ------------------------------------------------------- hold, cleanup */

static int cmd_hold(const char *spec)
{
   init();
   struct conn c;
   connect_spec(&c, spec, TRUE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   uint8_t *buf = malloc(512 * 128);
   EXPECT(VixDiskLib_Read(h, 0, 128, buf), VIX_OK);
   free(buf);
   const char *mode = VixDiskLib_GetTransportMode(h);
   printf("held %s\n", mode ? mode : "(null)");
   fflush(stdout);
   sleep(600); /* killed before this ends */
   return 1;
}

static int cmd_cleanup(const char *spec)
{
   init();
   struct conn c;
   connect_spec(&c, spec, TRUE);
   uint32_t cleaned = 99, remaining = 99;
   EXPECT(VixDiskLib_Cleanup(c.params, &cleaned, &remaining), VIX_OK);
   printf("cleanup %u %u\n", cleaned, remaining);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

/* ------------------------------------------------------- atexit, asyncerr */

static VixDiskLibConnectParams *atexit_params;

static void end_access_at_exit(void)
{
   VixError e = VixDiskLib_EndAccess(atexit_params, "vixtest");
   char *t = VixDiskLib_GetErrorText(e, NULL);
   printf("endaccess %" PRIu64 " %s\n", (uint64_t)VIX_ERROR_CODE(e), t ? t : "(null)");
   VixDiskLib_FreeErrorText(t);
   fflush(stdout);
}

static int cmd_atexit(const char *spec)
{
   init();
   struct conn c;
   connect_spec(&c, spec, TRUE);
   /* Kept for the handler; the process ends with it still connected,
      as the dumper's does. */
   atexit_params = c.params;
   /* An earlier error on this thread, as a real run has: its text lives
      in thread-local storage that exit() destroys before the handler. */
   EXPECT(VixDiskLib_Close(NULL), VIX_E_INVALID_HANDLE);
   atexit(end_access_at_exit);
   printf("registered\n");
   return failures != 0;
}

static void count_done(void *data, VixError result)
{
   VixError *out = data;
   *out = result;
}

static int cmd_asyncerr(const char *path)
{
   init();
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   struct conn c;
   connect_spec(&c, spec, TRUE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   uint64_t cap = capacity_of(h);
   /* The Rust test cuts the data file after this line. */
   printf("opened\n");
   fflush(stdout);
   char line[16];
   if (!fgets(line, sizeof line, stdin))
      return 1;
   uint8_t *buf = malloc(cap * 512);
   VixError result = VIX_OK;
   EXPECT(VixDiskLib_ReadAsync(h, 0, cap, buf, count_done, &result), VIX_ASYNC);
   EXPECT(VixDiskLib_Wait(h), VIX_OK);
   CHECK(result != VIX_OK, "the read of a cut file succeeded");
   char *t = VixDiskLib_GetErrorText(result, NULL);
   printf("asyncerr %" PRIu64 " %s\n", (uint64_t)VIX_ERROR_CODE(result), t ? t : "(null)");
   VixDiskLib_FreeErrorText(t);
   free(buf);
   VixDiskLib_Close(h);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static int cmd_lengths(const char *path)
{
   init();
   char spec[4096];
   snprintf(spec, sizeof spec, "local:%s", path);
   struct conn c;
   connect_spec(&c, spec, TRUE);
   VixDiskLibHandle h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   size_t need = 0;
   EXPECT(VixDiskLib_GetMetadataKeys(h, NULL, 0, &need), VIX_E_BUFFER_TOOSMALL);
   CHECK(need > 1, "keys length %zu", need);
   need = 0;
   EXPECT(VixDiskLib_ReadMetadata(h, "adapterType", NULL, 0, &need), VIX_E_BUFFER_TOOSMALL);
   CHECK(need > 1, "value length %zu", need);
   printf("lengths ok\n");
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static int cmd_createtypes(const char *dir)
{
   init();
   char path[4096], spec[4200];
   snprintf(path, sizeof path, "%s/t.vmdk", dir);
   snprintf(spec, sizeof spec, "local:%s", path);
   struct conn c;
   connect_spec(&c, spec, FALSE);
   VixDiskLibCreateParams cp;
   memset(&cp, 0, sizeof cp);
   cp.adapterType = VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
   cp.hwVersion = VIXDISKLIB_HWVERSION_ESX65;
   cp.capacity = 2048;
   cp.logicalSectorSize = 512;
   cp.physicalSectorSize = 512;
   /* A redo log is never created as a disk: not supported, not "unknown". */
   cp.diskType = VIXDISKLIB_DISK_VMFS_SPARSE;
   EXPECT(VixDiskLib_Create(c.conn, path, &cp, NULL, NULL), VIX_E_NOT_SUPPORTED);
   cp.diskType = (VixDiskLibDiskType)99;
   EXPECT(VixDiskLib_Create(c.conn, path, &cp, NULL, NULL), VIX_E_INVALID_ARG);
   /* Stream-optimized: made empty, read-only in place (fill it by Clone). */
   cp.diskType = VIXDISKLIB_DISK_STREAM_OPTIMIZED;
   EXPECT(VixDiskLib_Create(c.conn, path, &cp, NULL, NULL), VIX_OK);
   VixDiskLibHandle h = NULL;
   EXPECT(VixDiskLib_Open(c.conn, path, 0, &h), VIX_E_FILE_READ_ONLY);
   EXPECT(VixDiskLib_Open(c.conn, path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, &h), VIX_OK);
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   printf("createtypes ok\n");
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static void print_info(VixDiskLibHandle h)
{
   VixDiskLibInfo *info = NULL;
   EXPECT(VixDiskLib_GetInfo(h, &info), VIX_OK);
   if (info) {
      printf("info %u/%u/%u adapter %d capacity %" PRIu64 "\n", info->biosGeo.cylinders,
             info->biosGeo.heads, info->biosGeo.sectors, (int)info->adapterType,
             (uint64_t)info->capacity);
      VixDiskLib_FreeInfo(info);
   }
}

static int cmd_meta(const char *spec, const char *key, const char *value)
{
   init();
   struct conn c;
   connect_spec(&c, spec, FALSE);
   VixDiskLibHandle h = open_disk(&c, 0);
   size_t need = 0;
   EXPECT(VixDiskLib_GetMetadataKeys(h, NULL, 0, &need), VIX_E_BUFFER_TOOSMALL);
   char *keys = calloc(1, need + 1);
   EXPECT(VixDiskLib_GetMetadataKeys(h, keys, need, NULL), VIX_OK);
   printf("keys");
   for (char *k = keys; *k; k += strlen(k) + 1)
      printf(" %s", k);
   printf("\n");
   free(keys);
   print_info(h);
   VixError e = VixDiskLib_WriteMetadata(h, key, value);
   printf("write %" PRIu64 "\n", (uint64_t)VIX_ERROR_CODE(e));
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   /* A new connection and handle read what was written. */
   connect_spec(&c, spec, TRUE);
   h = open_disk(&c, VIXDISKLIB_FLAG_OPEN_READ_ONLY);
   char buf[256] = "";
   e = VixDiskLib_ReadMetadata(h, key, buf, sizeof buf, NULL);
   printf("readback %" PRIu64 " %s\n", (uint64_t)VIX_ERROR_CODE(e), e == VIX_OK ? buf : "-");
   EXPECT(VixDiskLib_Close(h), VIX_OK);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

static int cmd_opencode(const char *spec)
{
   init();
   struct conn c;
   connect_spec(&c, spec, TRUE);
   VixDiskLibHandle h = NULL;
   VixError e = VixDiskLib_Open(c.conn, c.path, VIXDISKLIB_FLAG_OPEN_READ_ONLY, &h);
   printf("open %" PRIu64 "\n", (uint64_t)VIX_ERROR_CODE(e));
   if (e == VIX_OK)
      VixDiskLib_Close(h);
   disconnect(&c);
   VixDiskLib_Exit();
   return failures != 0;
}

int main(int argc, char **argv)
{
   setvbuf(stdout, NULL, _IOLBF, 0);
   if (argc >= 4 && strcmp(argv[1], "read") == 0)
      return cmd_read(argv[2], argv[3]);
   if (argc >= 5 && strcmp(argv[1], "write") == 0)
      return cmd_write(argv[2], argv[3], strtoull(argv[4], NULL, 0));
   if (argc >= 5 && strcmp(argv[1], "create") == 0)
      return cmd_create(argv[2], strtoull(argv[3], NULL, 0), atoi(argv[4]));
   if (argc >= 3 && strcmp(argv[1], "errors") == 0)
      return cmd_errors(argv[2]);
   if (argc >= 5 && strcmp(argv[1], "clone") == 0)
      return cmd_clone(argv[2], argv[3], atoi(argv[4]));
   if (argc >= 4 && strcmp(argv[1], "child") == 0)
      return cmd_child(argv[2], argv[3]);
   if (argc >= 4 && strcmp(argv[1], "single") == 0)
      return cmd_single(argv[2], argv[3]);
   if (argc >= 3 && strcmp(argv[1], "shrink") == 0)
      return cmd_shrink(argv[2]);
   if (argc >= 4 && strcmp(argv[1], "threads") == 0)
      return cmd_threads(argv[2], atoi(argv[3]));
   if (argc >= 4 && strcmp(argv[1], "loop") == 0)
      return cmd_loop(argv[2], atoi(argv[3]));
   if (argc >= 3 && strcmp(argv[1], "hold") == 0)
      return cmd_hold(argv[2]);
   if (argc >= 3 && strcmp(argv[1], "cleanup") == 0)
      return cmd_cleanup(argv[2]);
   if (argc >= 3 && strcmp(argv[1], "atexit") == 0)
      return cmd_atexit(argv[2]);
   if (argc >= 3 && strcmp(argv[1], "createtypes") == 0)
      return cmd_createtypes(argv[2]);
   if (argc >= 5 && strcmp(argv[1], "meta") == 0)
      return cmd_meta(argv[2], argv[3], argv[4]);
   if (argc >= 3 && strcmp(argv[1], "lengths") == 0)
      return cmd_lengths(argv[2]);
   if (argc >= 3 && strcmp(argv[1], "opencode") == 0)
      return cmd_opencode(argv[2]);
   if (argc >= 3 && strcmp(argv[1], "asyncerr") == 0)
      return cmd_asyncerr(argv[2]);
   fprintf(stderr, "usage: see the comment at the top of vixtest.c\n");
   return 2;
}
