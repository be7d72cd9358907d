/*
 * aclshm_sim.h: entry points that only aclshm's ACL runtime simulator exports, next to the ACL ones.
 *
 * A real libascendcl.so has none of these; aclshm resolves them as optional symbols and uses their presence
 * to tell the simulator's drop-in library from a real CANN runtime. They exist for tests and tools: fault
 * injection, per-function call counters, live-object counts and reclaiming what dead processes left behind.
 */
#ifndef ACLSHM_SIM_H
#define ACLSHM_SIM_H

#include "aclshm_acl.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Version of this extension interface; aclshmSimGetInfo reports it. */
#define ACLSHM_SIM_ABI_VERSION 1U
/** Most devices a simulator can be configured with. */
#define ACLSHM_SIM_MAX_DEVICES 16U

/** What the simulator is and how it is configured. */
typedef struct aclshmSimInfo {
    /** ACLSHM_SIM_ABI_VERSION of the library that answered. */
    uint32_t abiVersion;
    /** Number of simulated devices. */
    uint32_t deviceCount;
    /** Capacity of each simulated device, in bytes. */
    uint64_t hbmBytes;
    /** Minimum allocation granularity of device memory, in bytes. */
    uint64_t granularity;
    /** The simulator's version, NUL-terminated. */
    char version[32];
} aclshmSimInfo;

/** Live simulator objects: in the whole simulator directory, and in the calling process. */
typedef struct aclshmSimStats {
    /** Processes attached to the simulator directory (this one included). */
    uint32_t processes;
    /** Physical memory objects (from aclrtMallocPhysical or aclrtMalloc) alive in any process. */
    uint32_t physObjects;
    /** IPC memory keys not yet closed by their exporter. */
    uint32_t ipcKeys;
    /** Notifies alive in any process. */
    uint32_t notifies;
    /** Bytes of device memory in use, per device. */
    uint64_t deviceBytesUsed[ACLSHM_SIM_MAX_DEVICES];
    /** Physical memory handles held by this process (allocated or imported, not yet released). */
    uint32_t localHandles;
    /** Virtual ranges reserved by this process. */
    uint32_t localReservations;
    /** Mappings made by this process with aclrtMapMem. */
    uint32_t localMappings;
    /** aclrtMalloc allocations of this process. */
    uint32_t localDeviceAllocs;
    /** aclrtMallocHost allocations of this process. */
    uint32_t localHostAllocs;
    /** Streams of this process, default streams included. */
    uint32_t localStreams;
    /** Notifies this process created or imported and has not destroyed. */
    uint32_t localNotifies;
    /** IPC memory imports this process has not closed. */
    uint32_t localIpcImports;
    /** IPC events alive in any process. */
    uint32_t ipcEvents;
    /** Events this process created or opened and has not destroyed. */
    uint32_t localEvents;
    /** Contexts this process created with aclrtCreateContext and has not destroyed. */
    uint32_t localContexts;
} aclshmSimStats;

/** A process attached to the simulator directory, and what it holds there. */
typedef struct aclshmSimProcess {
    /** Its pid, as the simulator's processes see it. */
    int32_t pid;
    /** Its pid as the host sees it (aclrtDeviceGetBareTgid). */
    int32_t bareTgid;
    /** 1 while it runs; 0 once it is gone and what it holds waits for a reclaim. */
    uint32_t alive;
    /** Physical memory objects it allocated (aclrtMallocPhysical or aclrtMalloc) that are still alive. */
    uint32_t physAllocated;
    /** Physical memory objects it holds a handle to (allocated or imported). */
    uint32_t physHeld;
    /** Its exports still open (shareable handles not freed yet). */
    uint32_t exports;
    /** IPC memory keys it exported and has not closed. */
    uint32_t ipcKeys;
    /** IPC memory keys it imported and has not closed. */
    uint32_t ipcImports;
    /** Notifies it created or imported and has not destroyed. */
    uint32_t notifies;
    uint32_t reserved;
    /** Bytes of device memory it allocated that are still alive. */
    uint64_t bytesAllocated;
} aclshmSimProcess;

/** Describe the simulator. */
aclError aclshmSimGetInfo(aclshmSimInfo *info);
/**
 * Copy the simulator directory's path, NUL-terminated, into buf (len bytes). needed receives the length the
 * path needs, NUL included; when len is too small the call fails with ACL_ERROR_INVALID_PARAM.
 */
aclError aclshmSimGetDir(char *buf, size_t len, size_t *needed);
/** Count live objects. */
aclError aclshmSimGetStats(aclshmSimStats *stats);
/** How many times this process has called the named ACL function (failed calls included). */
aclError aclshmSimGetCallCount(const char *func, uint64_t *count);
/**
 * Make calls of the named ACL function fail with code: the nth call from now (1 = the next one) and the
 * times - 1 calls after it. A failing call does nothing else. code must be non-zero.
 */
aclError aclshmSimInjectFault(const char *func, uint64_t nth, uint64_t times, aclError code);
/** Disarm every injected fault of this process. */
aclError aclshmSimClearFaults(void);
/** Release what dead processes left in the simulator directory; reclaimed receives how many there were. */
aclError aclshmSimReclaim(uint32_t *reclaimed);
/**
 * List the processes attached to the simulator directory, dead ones included until they are reclaimed: up to
 * cap entries into procs (which may be NULL when cap is 0); count receives how many there are. Reclaims
 * nothing.
 */
aclError aclshmSimListProcesses(aclshmSimProcess *procs, size_t cap, size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* ACLSHM_SIM_H */
