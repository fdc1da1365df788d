/*
 * vixDiskLib.h — the VixDiskLib C API as implemented by this project's
 * libvixDiskLib.so.8 (an open replacement for VMware's VDDK library).
 *
 * Written from public facts about the API (function signatures, struct
 * layouts on x86-64, constants and error codes); see
 * shared/notes/vixdisklib-api.md. Layouts are checked by
 * vixdisklib/tests/abi.rs and by the C tests in vixdisklib/tests/c/.
 *
 * Licensed under MIT or Apache-2.0, like the rest of the project.
 */
#ifndef VIXDISKLIB_RS_H
#define VIXDISKLIB_RS_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * VMware's basic types (its vm_basic_types.h, which VMware's vixDiskLib.h
 * brings in): VDDK programs declare variables with them. Built on
 * <stdint.h>, so they are the same types as uint64_t & co.; a program
 * that already has VMware's basic-types header (its guard defined) keeps
 * its own.
 */
#ifndef _VM_BASIC_TYPES_H_
#define _VM_BASIC_TYPES_H_
typedef uint64_t uint64;
typedef int64_t int64;
typedef uint32_t uint32;
typedef int32_t int32;
typedef uint16_t uint16;
typedef int16_t int16;
typedef uint8_t uint8;
typedef int8_t int8;
typedef char Bool;
#endif

typedef uint64_t VixError;
typedef uint64_t VixDiskLibSectorType;
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

#define VIX_ERROR_CODE(err) ((err) & 0xFFFF)
#define VIX_SUCCEEDED(err) (VIX_OK == (err))
#define VIX_FAILED(err) (VIX_OK != (err))

enum {
   VIX_OK = 0,
   VIX_E_FAIL = 1,
   VIX_E_OUT_OF_MEMORY = 2,
   VIX_E_INVALID_ARG = 3,
   VIX_E_FILE_NOT_FOUND = 4,
   VIX_E_OBJECT_IS_BUSY = 5,
   VIX_E_NOT_SUPPORTED = 6,
   VIX_E_FILE_ERROR = 7,
   VIX_E_DISK_FULL = 8,
   VIX_E_INCORRECT_FILE_TYPE = 9,
   VIX_E_CANCELLED = 10,
   VIX_E_FILE_READ_ONLY = 11,
   VIX_E_FILE_ALREADY_EXISTS = 12,
   VIX_E_FILE_ACCESS_ERROR = 13,
   VIX_E_FILE_ALREADY_LOCKED = 15,
   VIX_E_BUFFER_TOOSMALL = 24,
   VIX_E_OBJECT_NOT_FOUND = 25,
   VIX_E_HOST_NOT_CONNECTED = 26,
   VIX_E_AUTHENTICATION_FAIL = 35,
   VIX_E_HOST_CONNECTION_LOST = 36,
   VIX_E_INVALID_HANDLE = 1000,
   VIX_E_NOT_FOUND = 2000,
   VIX_E_HOST_NETBLKDEV_HANDSHAKE = 14006,
   VIX_E_HOST_SERVER_NOT_FOUND = 14008,
   VIX_E_HOST_NETWORK_CONN_REFUSED = 14009,
   VIX_E_HOST_TCP_CONN_LOST = 14011,
   VIX_E_DISK_INVAL = 16000,
   VIX_E_DISK_OUTOFRANGE = 16007,
   VIX_E_DISK_CID_MISMATCH = 16008,
   VIX_E_DISK_OPENPARENT = 16012,
   VIX_E_DISK_NEEDKEY = 16014,
   VIX_E_DISK_INVALIDCHAIN = 16030,
   VIX_E_DISK_KEY_NOTFOUND = 16052,
   VIX_E_DISK_CAPACITY_MISMATCH = 16067,
   VIX_E_CANNOT_CONNECT_TO_HOST = 18000,
   VIX_ASYNC = 25000,
   VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED = 26000,
};

#define VIXDISKLIB_VERSION_MAJOR 8
#define VIXDISKLIB_VERSION_MINOR 0
#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB 16
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ 32
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ 64

typedef enum {
   VIXDISKLIB_DISK_MONOLITHIC_SPARSE = 1,
   VIXDISKLIB_DISK_MONOLITHIC_FLAT = 2,
   VIXDISKLIB_DISK_SPLIT_SPARSE = 3,
   VIXDISKLIB_DISK_SPLIT_FLAT = 4,
   VIXDISKLIB_DISK_VMFS_FLAT = 5,
   /* Created empty; opens read-only only (VIX_E_FILE_READ_ONLY for
      writing: grains are compressed in sequence), so it is filled by
      VixDiskLib_Clone. */
   VIXDISKLIB_DISK_STREAM_OPTIMIZED = 6,
   VIXDISKLIB_DISK_VMFS_THIN = 7,
   /* A COWD redo log: ESXi makes these for snapshots; VixDiskLib_Create
      returns VIX_E_NOT_SUPPORTED for it. */
   VIXDISKLIB_DISK_VMFS_SPARSE = 8,
   VIXDISKLIB_DISK_UNKNOWN = 256
} VixDiskLibDiskType;

typedef enum {
   VIXDISKLIB_ADAPTER_IDE = 1,
   VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
   VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
   VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

typedef enum {
   VIXDISKLIB_CRED_UID = 1,
   VIXDISKLIB_CRED_SESSIONID = 2,
   VIXDISKLIB_CRED_TICKETID = 3,
   VIXDISKLIB_CRED_SSPI = 4,
   VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

typedef enum {
   VIXDISKLIB_SPEC_VMX = 0,
   VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
   VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

#define VIXDISKLIB_HWVERSION_WORKSTATION_4 3
#define VIXDISKLIB_HWVERSION_WORKSTATION_5 4
#define VIXDISKLIB_HWVERSION_ESX30 4
#define VIXDISKLIB_HWVERSION_WORKSTATION_6 6
#define VIXDISKLIB_HWVERSION_ESX4X 7
#define VIXDISKLIB_HWVERSION_ESX50 8
#define VIXDISKLIB_HWVERSION_ESX51 9
#define VIXDISKLIB_HWVERSION_ESX55 10
#define VIXDISKLIB_HWVERSION_ESX60 11
#define VIXDISKLIB_HWVERSION_ESX65 13
#define VIXDISKLIB_HWVERSION_CURRENT VIXDISKLIB_HWVERSION_ESX65

/* Opaque handles. */
typedef struct VixDiskLibConnectParam *VixDiskLibConnection;
typedef struct VixDiskLibHandleStruct *VixDiskLibHandle;

typedef struct {
   char *userName;
   char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {
   char *cookie;
   char *userName;
   char *key;
} VixDiskLibSessionIdCreds;

typedef struct {
   char *id;
   char *datastoreMoRef;
   char *ssId;
} VixDiskLibVStorageObjectSpec;

/* 128 bytes on x86-64. */
typedef struct {
   char *vmxSpec;            /* "moref=vm-N" */
   char *serverName;         /* NULL or "" for local disks */
   char *thumbPrint;         /* "AA:BB:..." SHA-1 of the server certificate */
   long reserved1;
   VixDiskLibCredType credType;
   union {
      VixDiskLibUidPasswdCreds uid;
      VixDiskLibSessionIdCreds sessionId;
      void *ticketId;
   } creds;
   uint32_t port;
   uint32_t nfcHostPort;
   char *reserved3;
   char reserved4[8];
   void *reserved5;
   union {
      VixDiskLibVStorageObjectSpec vStorageObjSpec;
   } spec;
   VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct {
   uint32_t cylinders;
   uint32_t heads;
   uint32_t sectors;
} VixDiskLibGeometry;

/* 64 bytes on x86-64. */
typedef struct {
   VixDiskLibGeometry biosGeo;
   VixDiskLibGeometry physGeo;
   uint64_t capacity;          /* sectors */
   VixDiskLibAdapterType adapterType;
   int numLinks;
   char *parentFileNameHint;
   char *uuid;
   uint32_t logicalSectorSize;
   uint32_t physicalSectorSize;
} VixDiskLibInfo;

/* 32 bytes on x86-64. */
typedef struct {
   VixDiskLibDiskType diskType;
   VixDiskLibAdapterType adapterType;
   uint16_t hwVersion;
   uint64_t capacity;          /* sectors */
   uint32_t logicalSectorSize;
   uint32_t physicalSectorSize;
} VixDiskLibCreateParams;

typedef struct {
   uint64_t offset;            /* sectors */
   uint64_t length;            /* sectors */
} VixDiskLibBlock;

typedef struct {
   uint32_t numBlocks;
   VixDiskLibBlock blocks[1];
} VixDiskLibBlockList;

typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);
typedef Bool (*VixDiskLibProgressFunc)(void *progressData, int percentCompleted);
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);

/* Library. */
VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn,
                           VixDiskLibGenericLogFunc *panic,
                           const char *libDir, const char *configFile);
VixError VixDiskLib_Init(uint32_t majorVersion, uint32_t minorVersion,
                         VixDiskLibGenericLogFunc *log,
                         VixDiskLibGenericLogFunc *warn,
                         VixDiskLibGenericLogFunc *panic, const char *libDir);
void VixDiskLib_Exit(void);
const char *VixDiskLib_ListTransportModes(void);

/* Connections. */
VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *params);
VixError VixDiskLib_GetConnectParams(VixDiskLibConnection conn,
                                     VixDiskLibConnectParams **params);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params,
                              Bool readOnly, const char *snapshotRef,
                              const char *transportModes,
                              VixDiskLibConnection *conn);
VixError VixDiskLib_Connect(const VixDiskLibConnectParams *params,
                            VixDiskLibConnection *conn);
VixError VixDiskLib_Disconnect(VixDiskLibConnection conn);
VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *params,
                            uint32_t *numCleanedUp, uint32_t *numRemaining);
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *params,
                                     const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *params,
                              const char *identity);

/* Disks. */
VixError VixDiskLib_Create(VixDiskLibConnection conn, const char *path,
                           const VixDiskLibCreateParams *params,
                           VixDiskLibProgressFunc progress, void *progressData);
VixError VixDiskLib_CreateChild(VixDiskLibHandle diskHandle,
                                const char *childPath,
                                VixDiskLibDiskType diskType,
                                VixDiskLibProgressFunc progress,
                                void *progressData);
VixError VixDiskLib_Open(VixDiskLibConnection conn, const char *path,
                         uint32_t flags, VixDiskLibHandle *diskHandle);
VixError VixDiskLib_Close(VixDiskLibHandle diskHandle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle diskHandle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle diskHandle);

/* I/O. */
VixError VixDiskLib_Read(VixDiskLibHandle diskHandle, uint64_t startSector,
                         uint64_t numSectors, uint8_t *readBuffer);
VixError VixDiskLib_Write(VixDiskLibHandle diskHandle, uint64_t startSector,
                          uint64_t numSectors, const uint8_t *writeBuffer);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle diskHandle, uint64_t startSector,
                              uint64_t numSectors, uint8_t *readBuffer,
                              VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_WriteAsync(VixDiskLibHandle diskHandle,
                               uint64_t startSector, uint64_t numSectors,
                               const uint8_t *writeBuffer,
                               VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_Wait(VixDiskLibHandle diskHandle);
VixError VixDiskLib_Flush(VixDiskLibHandle diskHandle);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle diskHandle,
                                         uint64_t startSector,
                                         uint64_t numSectors,
                                         uint64_t chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);

/* Metadata. */
VixError VixDiskLib_ReadMetadata(VixDiskLibHandle diskHandle, const char *key,
                                 char *buf, size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_WriteMetadata(VixDiskLibHandle diskHandle, const char *key,
                                  const char *val);
VixError VixDiskLib_GetMetadataKeys(VixDiskLibHandle diskHandle, char *keys,
                                    size_t maxLen, size_t *requiredLen);

/* Maintenance. */
VixError VixDiskLib_Unlink(VixDiskLibConnection conn, const char *path);
VixError VixDiskLib_Grow(VixDiskLibConnection conn, const char *path,
                         uint64_t capacityInSectors, Bool updateGeometry,
                         VixDiskLibProgressFunc progress, void *progressData);
VixError VixDiskLib_Shrink(VixDiskLibHandle diskHandle,
                           VixDiskLibProgressFunc progress, void *progressData);
VixError VixDiskLib_Defragment(VixDiskLibHandle diskHandle,
                               VixDiskLibProgressFunc progress,
                               void *progressData);
VixError VixDiskLib_Rename(const char *srcFileName, const char *dstFileName);
VixError VixDiskLib_Clone(VixDiskLibConnection dstConn, const char *dstPath,
                          VixDiskLibConnection srcConn, const char *srcPath,
                          const VixDiskLibCreateParams *params,
                          VixDiskLibProgressFunc progress, void *progressData,
                          Bool overWrite);
VixError VixDiskLib_IsAttachPossible(VixDiskLibHandle parent,
                                     VixDiskLibHandle child);
VixError VixDiskLib_Attach(VixDiskLibHandle parent, VixDiskLibHandle child);
VixError VixDiskLib_SpaceNeededForClone(VixDiskLibHandle diskHandle,
                                        VixDiskLibDiskType cloneDiskType,
                                        uint64_t *spaceNeeded);
VixError VixDiskLib_CheckRepair(VixDiskLibConnection conn, const char *filename,
                                Bool repair);

/* Errors. */
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);

#ifdef __cplusplus
}
#endif

#endif /* VIXDISKLIB_RS_H */
