/*
 * aclshm_acl.h: aclshm's own declarations of the part of the AscendCL runtime API (libascendcl.so)
 * that aclshm uses.
 *
 * Written for aclshm from the documented API (names, values, layouts and prototypes); it is not a copy of
 * the official headers, which may not be redistributed. `ffi/gen` checks every declaration here against the
 * official headers of a CANN release (see ffi/README.md) and generates the Rust bindings from this file.
 *
 * Layout: typedefs, then (unless ACLSHM_ACL_EXTERNAL_TYPES is defined) the constants, enums, structs and
 * error codes, then the function prototypes. Defining ACLSHM_ACL_EXTERNAL_TYPES after including the
 * official headers re-declares only the typedefs and prototypes: a C++ compiler then rejects any prototype
 * or typedef that differs from the official one. That is how the ABI check compares them.
 */
#ifndef ACLSHM_ACL_H
#define ACLSHM_ACL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Status returned by every runtime call: 0 on success, otherwise one of the error codes below. */
typedef int aclError;
/** A stream: an ordered queue of asynchronous work on one device. */
typedef void *aclrtStream;
/** A notify: a device-side flag that one stream records and another waits on, possibly across processes. */
typedef void *aclrtNotify;
/** A handle to physical device memory from aclrtMallocPhysical or aclrtMemImportFromShareableHandle. */
typedef void *aclrtDrvMemHandle;
/** An event: a point in a stream's work that other streams and the host can wait for. */
typedef void *aclrtEvent;
/** A context: a device and the streams and events made in it; each thread has a current one. */
typedef void *aclrtContext;

#ifndef ACLSHM_ACL_EXTERNAL_TYPES

/* ---- Flags ---- */

/** aclrtCreateNotify: a notify usable from the host (the default). */
#define ACL_NOTIFY_DEFAULT 0x00000000U
/** aclrtCreateNotify: a notify used on the device only. */
#define ACL_NOTIFY_DEVICE_USE_ONLY 0x00000001U

/** aclrtNotifyGetExportKey: keep pid validation on (importers must be whitelisted). */
#define ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT 0x0UL
/** aclrtNotifyGetExportKey: any process may import the key. Note the value is 0x2, not 0x1. */
#define ACL_RT_NOTIFY_EXPORT_FLAG_DISABLE_PID_VALIDATION 0x02UL
/** aclrtNotifyImportByKey: import without enabling peer access. */
#define ACL_RT_NOTIFY_IMPORT_FLAG_DEFAULT 0x0UL
/** aclrtNotifyImportByKey: let the runtime enable peer access to the exporter's device. */
#define ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS 0x02UL

/** aclrtIpcMemGetExportKey: keep pid validation on (importers must be whitelisted). */
#define ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT 0x0UL
/** aclrtIpcMemGetExportKey: any process may import the key. */
#define ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION 0x1UL
/** aclrtIpcMemImportByKey: import without enabling peer access. */
#define ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT 0x0UL
/** aclrtIpcMemImportByKey: let the runtime enable peer access to the exporter's device. */
#define ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS 0x1UL

/** aclrtMemExportToShareableHandle: keep pid validation on (importers must be whitelisted). */
#define ACL_RT_VMM_EXPORT_FLAG_DEFAULT 0x0UL
/** aclrtMemExportToShareableHandle: any process may import the shareable handle. */
#define ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION 0x1UL

/** aclrtCreateEventWithFlag / ExWithFlag: the host may synchronise on the event. */
#define ACL_EVENT_SYNC 0x00000001U
/** Event flag: the event marks a captured stream's progress. */
#define ACL_EVENT_CAPTURE_STREAM_PROGRESS 0x00000002U
/** Event flag: the event records a time stamp (aclrtEventElapsedTime). */
#define ACL_EVENT_TIME_LINE 0x00000008U
/** Event flag: the event is used on the device only. */
#define ACL_EVENT_DEVICE_USE_ONLY 0x00000010U
/** Event flag: an external event. */
#define ACL_EVENT_EXTERNAL 0x00000020U
/** aclrtCreateEventExWithFlag: an event other processes can open (aclrtIpcGetEventHandle). */
#define ACL_EVENT_IPC 0x00000040U
/** Size of an IPC event handle. */
#define ACL_IPC_EVENT_HANDLE_SIZE 64U

/** aclrtValueWait: wait until the value at the address is greater than or equal to the given one. */
#define ACL_STREAM_WAIT_VALUE_GEQ 0x00000000U
/** aclrtValueWait: wait until the value at the address equals the given one. */
#define ACL_STREAM_WAIT_VALUE_EQ 0x00000001U
/** aclrtValueWait: wait until the value at the address ANDed with the given one is not zero. */
#define ACL_STREAM_WAIT_VALUE_AND 0x00000002U
/** aclrtValueWait: wait until NOT (the value at the address OR the given one) is not zero. */
#define ACL_STREAM_WAIT_VALUE_NOR 0x00000003U

/* ---- Enums (4-byte C enums; values are append-only across releases) ---- */

/** Direction of a copy. */
typedef enum aclrtMemcpyKind {
    ACL_MEMCPY_HOST_TO_HOST = 0,
    ACL_MEMCPY_HOST_TO_DEVICE = 1,
    ACL_MEMCPY_DEVICE_TO_HOST = 2,
    ACL_MEMCPY_DEVICE_TO_DEVICE = 3,
    /** Let the runtime infer the direction from the pointers. */
    ACL_MEMCPY_DEFAULT = 4,
    ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE = 5,
    ACL_MEMCPY_INNER_DEVICE_TO_DEVICE = 6,
    ACL_MEMCPY_INTER_DEVICE_TO_DEVICE = 7,
} aclrtMemcpyKind;

/** Page-size and placement policy of aclrtMalloc. */
typedef enum aclrtMemMallocPolicy {
    ACL_MEM_MALLOC_HUGE_FIRST = 0,
    ACL_MEM_MALLOC_HUGE_ONLY = 1,
    ACL_MEM_MALLOC_NORMAL_ONLY = 2,
    ACL_MEM_MALLOC_HUGE_FIRST_P2P = 3,
    ACL_MEM_MALLOC_HUGE_ONLY_P2P = 4,
    ACL_MEM_MALLOC_NORMAL_ONLY_P2P = 5,
    ACL_MEM_MALLOC_HUGE1G_ONLY = 6,
    ACL_MEM_MALLOC_HUGE1G_ONLY_P2P = 7,
    ACL_MEM_TYPE_LOW_BAND_WIDTH = 0x0100,
    ACL_MEM_TYPE_HIGH_BAND_WIDTH = 0x1000,
    ACL_MEM_ACCESS_USER_SPACE_READONLY = 0x100000,
} aclrtMemMallocPolicy;

/** Kind and page size of memory (aclrtPhysicalMemProp.memAttr, aclrtGetMemInfo). */
typedef enum aclrtMemAttr {
    ACL_DDR_MEM = 0,
    ACL_HBM_MEM = 1,
    ACL_DDR_MEM_HUGE = 2,
    ACL_DDR_MEM_NORMAL = 3,
    /** Device memory in 2 MiB pages. */
    ACL_HBM_MEM_HUGE = 4,
    /** Device memory; the runtime backs it with huge pages all the same. */
    ACL_HBM_MEM_NORMAL = 5,
    ACL_DDR_MEM_P2P_HUGE = 6,
    ACL_DDR_MEM_P2P_NORMAL = 7,
    ACL_HBM_MEM_P2P_HUGE = 8,
    ACL_HBM_MEM_P2P_NORMAL = 9,
    /** Device memory in 1 GiB pages. */
    ACL_HBM_MEM_HUGE1G = 10,
    ACL_HBM_MEM_P2P_HUGE1G = 11,
    ACL_MEM_NORMAL = 12,
    ACL_MEM_HUGE = 13,
    ACL_MEM_HUGE1G = 14,
    ACL_MEM_P2P_NORMAL = 15,
    ACL_MEM_P2P_HUGE = 16,
    ACL_MEM_P2P_HUGE1G = 17,
} aclrtMemAttr;

/** Where memory lives. */
typedef enum aclrtMemLocationType {
    /** Reserved; not supported by current runtimes. */
    ACL_MEM_LOCATION_TYPE_HOST = 0,
    ACL_MEM_LOCATION_TYPE_DEVICE = 1,
    ACL_MEM_LOCATION_TYPE_UNREGISTERED = 2,
    ACL_MEM_LOCATION_TYPE_HOST_NUMA = 4,
} aclrtMemLocationType;

/** Where the calling process runs: on the device's own CPU or on a host driving it. */
typedef enum aclrtRunMode {
    ACL_DEVICE = 0,
    ACL_HOST = 1,
} aclrtRunMode;

/** Whether the last record of an event has completed (aclrtQueryEventStatus). */
typedef enum aclrtEventRecordedStatus {
    ACL_EVENT_RECORDED_STATUS_NOT_READY = 0,
    ACL_EVENT_RECORDED_STATUS_COMPLETE = 1,
} aclrtEventRecordedStatus;

/** Kind of shareable handle of the V2 export and import calls. */
typedef enum aclrtMemSharedHandleType {
    /** A 64-bit handle, valid within one server. */
    ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT = 0x1,
    /** A 128-byte fabric handle (aclrtMemFabricHandle), valid across the servers of a super node. */
    ACL_MEM_SHARE_HANDLE_TYPE_FABRIC = 0x2,
} aclrtMemSharedHandleType;

/** How physical memory is allocated; pinned is the only kind. */
typedef enum aclrtMemAllocationType {
    ACL_MEM_ALLOCATION_TYPE_PINNED = 0,
} aclrtMemAllocationType;

/** Handle type requested from aclrtMallocPhysical; NONE is the only one it accepts. */
typedef enum aclrtMemHandleType {
    ACL_MEM_HANDLE_TYPE_NONE = 0,
    ACL_MEM_HANDLE_TYPE_POSIX = 2,
} aclrtMemHandleType;

/** Which granularity aclrtMemGetAllocationGranularity reports. */
typedef enum aclrtMemGranularityOptions {
    ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM = 0,
    ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1,
    ACL_RT_MEM_ALLOC_GRANULARITY_UNDEF = 0xFFFF,
} aclrtMemGranularityOptions;

/** Access rights granted by aclrtMemSetAccess; READWRITE is the only one runtimes accept. */
typedef enum {
    ACL_RT_MEM_ACCESS_FLAGS_NONE = 0x0,
    ACL_RT_MEM_ACCESS_FLAGS_READ = 0x1,
    ACL_RT_MEM_ACCESS_FLAGS_READWRITE = 0x3,
} aclrtMemAccessFlags;

/* ---- Structs ---- */

/** A place: a device (or NUMA node) id and its kind. */
typedef struct aclrtMemLocation {
    /** Device id for ACL_MEM_LOCATION_TYPE_DEVICE, NUMA id for HOST_NUMA. */
    uint32_t id;
    aclrtMemLocationType type;
} aclrtMemLocation;

/** Properties of physical memory for aclrtMallocPhysical and aclrtMemGetAllocationGranularity. */
typedef struct aclrtPhysicalMemProp {
    /** Must be ACL_MEM_HANDLE_TYPE_NONE. */
    aclrtMemHandleType handleType;
    /** Must be ACL_MEM_ALLOCATION_TYPE_PINNED. */
    aclrtMemAllocationType allocationType;
    /** Kind and page size, for example ACL_HBM_MEM_HUGE. */
    aclrtMemAttr memAttr;
    /** The device that holds the memory. */
    aclrtMemLocation location;
    /** Reserved, 0. */
    uint64_t reserve;
} aclrtPhysicalMemProp;

/** What aclrtPointerGetAttributes says of an address. */
typedef struct aclrtPtrAttributes {
    /** DEVICE and its id, HOST for page-locked host memory, UNREGISTERED for other host memory. */
    aclrtMemLocation location;
    /** Page size of the memory, in bytes. */
    uint32_t pageSize;
    /** Reserved. */
    uint32_t rsv[4];
} aclrtPtrAttributes;

/** A fabric handle: physical memory exported for import on another server (ACL_MEM_SHARE_HANDLE_TYPE_FABRIC). */
typedef struct aclrtMemFabricHandle {
    uint8_t data[128];
} aclrtMemFabricHandle;

/** An event as another process opens it (aclrtIpcGetEventHandle, aclrtIpcOpenEventHandle). */
typedef struct aclrtIpcEventHandle {
    char reserved[ACL_IPC_EVENT_HANDLE_SIZE];
} aclrtIpcEventHandle;

/** Where the source and destination of a range of copies of aclrtMemcpyBatch are. */
typedef struct {
    aclrtMemLocation dstLoc;
    aclrtMemLocation srcLoc;
    /** Reserved. */
    uint8_t rsv[16];
} aclrtMemcpyBatchAttr;

/** One access grant for aclrtMemSetAccess. */
typedef struct {
    aclrtMemAccessFlags flags;
    aclrtMemLocation location;
    /** Reserved. */
    uint8_t rsv[12];
} aclrtMemAccessDesc;

/* ---- Error codes, ACL layer (acl_base_rt.h declares these as static const int) ---- */
static const int ACL_ERROR_NONE = 0;
static const int ACL_SUCCESS = 0;
static const int ACL_ERROR_INVALID_PARAM = 100000;
static const int ACL_ERROR_UNINITIALIZE = 100001;
static const int ACL_ERROR_REPEAT_INITIALIZE = 100002;
static const int ACL_ERROR_INVALID_FILE = 100003;
static const int ACL_ERROR_WRITE_FILE = 100004;
static const int ACL_ERROR_INVALID_FILE_SIZE = 100005;
static const int ACL_ERROR_PARSE_FILE = 100006;
static const int ACL_ERROR_FILE_MISSING_ATTR = 100007;
static const int ACL_ERROR_FILE_ATTR_INVALID = 100008;
static const int ACL_ERROR_INVALID_DUMP_CONFIG = 100009;
static const int ACL_ERROR_INVALID_PROFILING_CONFIG = 100010;
static const int ACL_ERROR_INVALID_MODEL_ID = 100011;
static const int ACL_ERROR_DESERIALIZE_MODEL = 100012;
static const int ACL_ERROR_PARSE_MODEL = 100013;
static const int ACL_ERROR_READ_MODEL_FAILURE = 100014;
static const int ACL_ERROR_MODEL_SIZE_INVALID = 100015;
static const int ACL_ERROR_MODEL_MISSING_ATTR = 100016;
static const int ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017;
static const int ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018;
static const int ACL_ERROR_MODEL_NOT_DYNAMIC = 100019;
static const int ACL_ERROR_OP_TYPE_NOT_MATCH = 100020;
static const int ACL_ERROR_OP_INPUT_NOT_MATCH = 100021;
static const int ACL_ERROR_OP_OUTPUT_NOT_MATCH = 100022;
static const int ACL_ERROR_OP_ATTR_NOT_MATCH = 100023;
static const int ACL_ERROR_OP_NOT_FOUND = 100024;
static const int ACL_ERROR_OP_LOAD_FAILED = 100025;
static const int ACL_ERROR_UNSUPPORTED_DATA_TYPE = 100026;
static const int ACL_ERROR_FORMAT_NOT_MATCH = 100027;
static const int ACL_ERROR_BIN_SELECTOR_NOT_REGISTERED = 100028;
static const int ACL_ERROR_KERNEL_NOT_FOUND = 100029;
static const int ACL_ERROR_BIN_SELECTOR_ALREADY_REGISTERED = 100030;
static const int ACL_ERROR_KERNEL_ALREADY_REGISTERED = 100031;
static const int ACL_ERROR_INVALID_QUEUE_ID = 100032;
static const int ACL_ERROR_REPEAT_SUBSCRIBE = 100033;
static const int ACL_ERROR_STREAM_NOT_SUBSCRIBE = 100034;
static const int ACL_ERROR_THREAD_NOT_SUBSCRIBE = 100035;
static const int ACL_ERROR_WAIT_CALLBACK_TIMEOUT = 100036;
static const int ACL_ERROR_REPEAT_FINALIZE = 100037;
static const int ACL_ERROR_NOT_STATIC_AIPP = 100038;
static const int ACL_ERROR_COMPILING_STUB_MODE = 100039;
static const int ACL_ERROR_GROUP_NOT_SET = 100040;
static const int ACL_ERROR_GROUP_NOT_CREATE = 100041;
static const int ACL_ERROR_PROF_ALREADY_RUN = 100042;
static const int ACL_ERROR_PROF_NOT_RUN = 100043;
static const int ACL_ERROR_DUMP_ALREADY_RUN = 100044;
static const int ACL_ERROR_DUMP_NOT_RUN = 100045;
static const int ACL_ERROR_PROF_REPEAT_SUBSCRIBE = 148046;
static const int ACL_ERROR_PROF_API_CONFLICT = 148047;
static const int ACL_ERROR_INVALID_MAX_OPQUEUE_NUM_CONFIG = 148048;
static const int ACL_ERROR_INVALID_OPP_PATH = 148049;
static const int ACL_ERROR_OP_UNSUPPORTED_DYNAMIC = 148050;
static const int ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED = 148051;
static const int ACL_ERROR_UNSUPPORTED_JPEG = 148052;
static const int ACL_ERROR_INVALID_BUNDLE_MODEL_ID = 148053;
static const int ACL_ERROR_BAD_ALLOC = 200000;
static const int ACL_ERROR_API_NOT_SUPPORT = 200001;
static const int ACL_ERROR_INVALID_DEVICE = 200002;
static const int ACL_ERROR_MEMORY_ADDRESS_UNALIGNED = 200003;
static const int ACL_ERROR_RESOURCE_NOT_MATCH = 200004;
static const int ACL_ERROR_INVALID_RESOURCE_HANDLE = 200005;
static const int ACL_ERROR_FEATURE_UNSUPPORTED = 200006;
static const int ACL_ERROR_PROF_MODULES_UNSUPPORTED = 200007;
static const int ACL_ERROR_STORAGE_OVER_LIMIT = 300000;
static const int ACL_ERROR_INTERNAL_ERROR = 500000;
static const int ACL_ERROR_FAILURE = 500001;
static const int ACL_ERROR_GE_FAILURE = 500002;
static const int ACL_ERROR_RT_FAILURE = 500003;
static const int ACL_ERROR_DRV_FAILURE = 500004;
static const int ACL_ERROR_PROFILING_FAILURE = 500005;

/* ---- Error codes, runtime layer (error_codes/rt_error_codes.h declares these as macros) ---- */
#define ACL_RT_SUCCESS                               0
#define ACL_ERROR_RT_PARAM_INVALID                   107000
#define ACL_ERROR_RT_INVALID_DEVICEID                107001
#define ACL_ERROR_RT_CONTEXT_NULL                    107002
#define ACL_ERROR_RT_STREAM_CONTEXT                  107003
#define ACL_ERROR_RT_MODEL_CONTEXT                   107004
#define ACL_ERROR_RT_STREAM_MODEL                    107005
#define ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID         107006
#define ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL        107007
#define ACL_ERROR_RT_ADDR_UNALIGNED                  107008
#define ACL_ERROR_RT_FILE_OPEN                       107009
#define ACL_ERROR_RT_FILE_WRITE                      107010
#define ACL_ERROR_RT_STREAM_SUBSCRIBE                107011
#define ACL_ERROR_RT_THREAD_SUBSCRIBE                107012
#define ACL_ERROR_RT_GROUP_NOT_SET                   107013
#define ACL_ERROR_RT_GROUP_NOT_CREATE                107014
#define ACL_ERROR_RT_STREAM_NO_CB_REG                107015
#define ACL_ERROR_RT_INVALID_MEMORY_TYPE             107016
#define ACL_ERROR_RT_INVALID_HANDLE                  107017
#define ACL_ERROR_RT_INVALID_MALLOC_TYPE             107018
#define ACL_ERROR_RT_WAIT_TIMEOUT                    107019
#define ACL_ERROR_RT_TASK_TIMEOUT                    107020
#define ACL_ERROR_RT_SYSPARAMOPT_NOT_SET             107021
#define ACL_ERROR_RT_DEVICE_TASK_ABORT               107022
#define ACL_ERROR_RT_STREAM_ABORT                    107023
#define ACL_ERROR_RT_CAPTURE_DEPENDENCY              107024
#define ACL_ERROR_RT_STREAM_UNJOINED                 107025
#define ACL_ERROR_RT_MODEL_CAPTURED                  107026
#define ACL_ERROR_RT_STREAM_CAPTURED                 107027
#define ACL_ERROR_RT_EVENT_CAPTURED                  107028
#define ACL_ERROR_RT_STREAM_NOT_CAPTURED             107029
#define ACL_ERROR_RT_CAPTURE_MODE_NOT_SUPPORT        107030
#define ACL_ERROR_RT_STREAM_CAPTURE_IMPLICIT         107031
#define ACL_ERROR_STREAM_CAPTURE_CONFLICT            107032
#define ACL_ERROR_STREAM_TASK_GROUP_STATUS           107033
#define ACL_ERROR_STREAM_TASK_GROUP_INTR             107034
#define ACL_ERROR_RT_TASK_ABORT_STOP                 107035
#define ACL_ERROR_RT_STREAM_CAPTURE_UNMATCHED        107036
#define ACL_ERROR_RT_MODEL_RUNNING                   107037
#define ACL_ERROR_RT_STREAM_CAPTURE_WRONG_THREAD     107038
#define ACL_ERROR_RT_INSUFFICIENT_INPUT_ARRAY        107039
#define ACL_ERROR_RT_MODEL_UPDATE_FAILED             107040
#define ACL_ERROR_RT_CAPTURE_MODE_BLOCK_ASYNC        107041
#define ACL_ERROR_RT_SYMBOL_NOT_FOUND                107042
#define ACL_ERROR_RT_INVALID_SYMBOL                  107043
#define ACL_ERROR_RT_INVALID_DEVICE_FUNCTION         107044
#define ACL_ERROR_RT_STREAM_NOT_SUPPORT_OPERA        107045
#define ACL_ERROR_RT_SUB_ACLGRAPH_IS_CAPTURING       107046
#define ACL_ERROR_RT_FEATURE_NOT_SUPPORT             207000
#define ACL_ERROR_RT_MEMORY_ALLOCATION               207001
#define ACL_ERROR_RT_MEMORY_FREE                     207002
#define ACL_ERROR_RT_AICORE_OVER_FLOW                207003
#define ACL_ERROR_RT_NO_DEVICE                       207004
#define ACL_ERROR_RT_RESOURCE_ALLOC_FAIL             207005
#define ACL_ERROR_RT_NO_PERMISSION                   207006
#define ACL_ERROR_RT_NO_EVENT_RESOURCE               207007
#define ACL_ERROR_RT_NO_STREAM_RESOURCE              207008
#define ACL_ERROR_RT_NO_NOTIFY_RESOURCE              207009
#define ACL_ERROR_RT_NO_MODEL_RESOURCE               207010
#define ACL_ERROR_RT_NO_CDQ_RESOURCE                 207011
#define ACL_ERROR_RT_OVER_LIMIT                      207012
#define ACL_ERROR_RT_QUEUE_EMPTY                     207013
#define ACL_ERROR_RT_QUEUE_FULL                      207014
#define ACL_ERROR_RT_REPEATED_INIT                   207015
#define ACL_ERROR_RT_AIVEC_OVER_FLOW                 207016
#define ACL_ERROR_RT_OVER_FLOW                       207017
#define ACL_ERROR_RT_DEVICE_OOM                      207018
#define ACL_ERROR_RT_FEATURE_NOT_SUPPORT_UPDATE_OP   207019
#define ACL_ERROR_RT_TIMEOUT                         207020
#define ACL_ERROR_RT_INTERNAL_ERROR                  507000
#define ACL_ERROR_RT_TS_ERROR                        507001
#define ACL_ERROR_RT_STREAM_TASK_FULL                507002
#define ACL_ERROR_RT_STREAM_TASK_EMPTY               507003
#define ACL_ERROR_RT_STREAM_NOT_COMPLETE             507004
#define ACL_ERROR_RT_END_OF_SEQUENCE                 507005
#define ACL_ERROR_RT_EVENT_NOT_COMPLETE              507006
#define ACL_ERROR_RT_CONTEXT_RELEASE_ERROR           507007
#define ACL_ERROR_RT_SOC_VERSION                     507008
#define ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT           507009
#define ACL_ERROR_RT_LOST_HEARTBEAT                  507010
#define ACL_ERROR_RT_MODEL_EXECUTE                   507011
#define ACL_ERROR_RT_REPORT_TIMEOUT                  507012
#define ACL_ERROR_RT_SYS_DMA                         507013
#define ACL_ERROR_RT_AICORE_TIMEOUT                  507014
#define ACL_ERROR_RT_AICORE_EXCEPTION                507015
#define ACL_ERROR_RT_AICORE_TRAP_EXCEPTION           507016
#define ACL_ERROR_RT_AICPU_TIMEOUT                   507017
#define ACL_ERROR_RT_AICPU_EXCEPTION                 507018
#define ACL_ERROR_RT_AICPU_DATADUMP_RSP_ERR          507019
#define ACL_ERROR_RT_AICPU_MODEL_RSP_ERR             507020
#define ACL_ERROR_RT_PROFILING_ERROR                 507021
#define ACL_ERROR_RT_IPC_ERROR                       507022
#define ACL_ERROR_RT_MODEL_ABORT_NORMAL              507023
#define ACL_ERROR_RT_KERNEL_UNREGISTERING            507024
#define ACL_ERROR_RT_RINGBUFFER_NOT_INIT             507025
#define ACL_ERROR_RT_RINGBUFFER_NO_DATA              507026
#define ACL_ERROR_RT_KERNEL_LOOKUP                   507027
#define ACL_ERROR_RT_KERNEL_DUPLICATE                507028
#define ACL_ERROR_RT_DEBUG_REGISTER_FAIL             507029
#define ACL_ERROR_RT_DEBUG_UNREGISTER_FAIL           507030
#define ACL_ERROR_RT_LABEL_CONTEXT                   507031
#define ACL_ERROR_RT_PROGRAM_USE_OUT                 507032
#define ACL_ERROR_RT_DEV_SETUP_ERROR                 507033
#define ACL_ERROR_RT_VECTOR_CORE_TIMEOUT             507034
#define ACL_ERROR_RT_VECTOR_CORE_EXCEPTION           507035
#define ACL_ERROR_RT_VECTOR_CORE_TRAP_EXCEPTION      507036
#define ACL_ERROR_RT_CDQ_BATCH_ABNORMAL              507037
#define ACL_ERROR_RT_DIE_MODE_CHANGE_ERROR           507038
#define ACL_ERROR_RT_DIE_SET_ERROR                   507039
#define ACL_ERROR_RT_INVALID_DIEID                   507040
#define ACL_ERROR_RT_DIE_MODE_NOT_SET                507041
#define ACL_ERROR_RT_AICORE_TRAP_READ_OVERFLOW       507042
#define ACL_ERROR_RT_AICORE_TRAP_WRITE_OVERFLOW      507043
#define ACL_ERROR_RT_VECTOR_CORE_TRAP_READ_OVERFLOW  507044
#define ACL_ERROR_RT_VECTOR_CORE_TRAP_WRITE_OVERFLOW 507045
#define ACL_ERROR_RT_STREAM_SYNC_TIMEOUT             507046
#define ACL_ERROR_RT_EVENT_SYNC_TIMEOUT              507047
#define ACL_ERROR_RT_FFTS_PLUS_TIMEOUT               507048
#define ACL_ERROR_RT_FFTS_PLUS_EXCEPTION             507049
#define ACL_ERROR_RT_FFTS_PLUS_TRAP_EXCEPTION        507050
#define ACL_ERROR_RT_SEND_MSG                        507051
#define ACL_ERROR_RT_COPY_DATA                       507052
#define ACL_ERROR_RT_DEVICE_MEM_ERROR                507053
#define ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR         507054
#define ACL_ERROR_RT_SUSPECT_DEVICE_MEM_ERROR        507055
#define ACL_ERROR_RT_LINK_ERROR                      507056
#define ACL_ERROR_RT_SUSPECT_REMOTE_ERROR            507057
#define ACL_ERROR_RT_DRV_INTERNAL_ERROR              507899
#define ACL_ERROR_RT_AICPU_INTERNAL_ERROR            507900
#define ACL_ERROR_RT_SOCKET_CLOSE                    507901
#define ACL_ERROR_RT_AICPU_INFO_LOAD_RSP_ERR         507902
#define ACL_ERROR_RT_STREAM_CAPTURE_INVALIDATED      507903
#define ACL_ERROR_RT_COMM_OP_RETRY_FAIL              507904
#define ACL_ERROR_SNAPSHOT_LOCK_TIMEOUT              507905
#define ACL_ERROR_SNAPSHOT_LOCK_FAILED               507906
#define ACL_ERROR_SNAPSHOT_UNLOCK_FAILED             507907
#define ACL_ERROR_SNAPSHOT_BACKUP_FAILED             507908
#define ACL_ERROR_SNAPSHOT_RESTORE_FAILED            507909
#define ACL_ERROR_HOST_MEMORY_ALREADY_REGISTERED     507910
#define ACL_ERROR_HOST_MEMORY_NOT_REGISTERED         507911
#define ACL_ERROR_SNAPSHOT_CALLBACK_FAILED           507912
#define ACL_ERROR_SNAPSHOT_REGISTER_CALLBACK_FAILED  507913
#define ACL_ERROR_RT_L3_PORT_ERROR                   507914
#define ACL_ERROR_RT_CCU_TIMEOUT                     507915
#define ACL_ERROR_RT_CCU_EXCEPTION                   507916

#endif /* ACLSHM_ACL_EXTERNAL_TYPES */

/* ---- Initialisation ---- */

/** Initialise the runtime; once per process. configPath may be NULL. */
aclError aclInit(const char *configPath);
/** Release the runtime; once per process, before it exits. */
aclError aclFinalize(void);
/** Report the runtime's version. */
aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion);

/* ---- Devices ---- */

/** Make deviceId the calling thread's current device (creating its default context). */
aclError aclrtSetDevice(int32_t deviceId);
/** Drop one reference to deviceId taken by aclrtSetDevice; the last one releases its resources. */
aclError aclrtResetDevice(int32_t deviceId);
/** Release deviceId's resources in this process whatever its reference count. */
aclError aclrtResetDeviceForce(int32_t deviceId);
/** The calling thread's current device. */
aclError aclrtGetDevice(int32_t *deviceId);
/** The number of devices visible to this process. */
aclError aclrtGetDeviceCount(uint32_t *count);
/** Whether deviceId can access peerDeviceId's memory (1) or not (0). */
aclError aclrtDeviceCanAccessPeer(int32_t *canAccessPeer, int32_t deviceId, int32_t peerDeviceId);
/** Let the current device access peerDeviceId's memory; flags must be 0. One direction only. */
aclError aclrtDeviceEnablePeerAccess(int32_t peerDeviceId, uint32_t flags);
/** Undo aclrtDeviceEnablePeerAccess. */
aclError aclrtDeviceDisablePeerAccess(int32_t peerDeviceId);
/** This process's pid as the host sees it (outside any container); the pid whitelists expect. */
aclError aclrtDeviceGetBareTgid(int32_t *pid);
/** Free and total bytes of the current device's memory of the given kind. */
aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total);
/** Whether this process runs on the device (ACL_DEVICE) or on a host (ACL_HOST). */
aclError aclrtGetRunMode(aclrtRunMode *runMode);
/** Block until all work queued on the current device's streams has run. */
aclError aclrtSynchronizeDevice(void);

/* ---- Contexts ---- */

/** Create a context on deviceId and make it the calling thread's current context. */
aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId);
/** Destroy a context from aclrtCreateContext (not a device's default context). */
aclError aclrtDestroyContext(aclrtContext context);
/** Make context the calling thread's current context (and its device the current device). */
aclError aclrtSetCurrentContext(aclrtContext context);
/** The calling thread's current context. */
aclError aclrtGetCurrentContext(aclrtContext *context);

/* ---- Streams ---- */

/** Create a stream on the current device. */
aclError aclrtCreateStream(aclrtStream *stream);
/** Destroy a stream after its queued work has run. */
aclError aclrtDestroyStream(aclrtStream stream);
/** Destroy a stream at once, dropping queued work. */
aclError aclrtDestroyStreamForce(aclrtStream stream);
/** Block until all work queued on the stream has run; reports the first failure. */
aclError aclrtSynchronizeStream(aclrtStream stream);

/* ---- Device and host memory ---- */

/** Allocate device memory on the current device. */
aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy);
/** Free memory from aclrtMalloc. */
aclError aclrtFree(void *devPtr);
/** Allocate page-locked host memory. */
aclError aclrtMallocHost(void **hostPtr, size_t size);
/** Free memory from aclrtMallocHost. */
aclError aclrtFreeHost(void *hostPtr);
/** Copy count bytes; destMax is the capacity at dst. */
aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind);
/** Queue a copy of count bytes on a stream. */
aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                          aclrtStream stream);
/** Set count bytes of device memory to value; maxCount is the capacity at devPtr. */
aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count);
/** Copy numBatches ranges; each attribute applies from the copy its attrsIndexes entry names; failIndex names a failed copy (or SIZE_MAX). */
aclError aclrtMemcpyBatch(void **dsts, size_t *destMaxs, void **srcs, size_t *sizes, size_t numBatches,
                          aclrtMemcpyBatchAttr *attrs, size_t *attrsIndexes, size_t numAttrs, size_t *failIndex);
/** Whether an address is device memory (and on which device), page-locked host memory or other memory. */
aclError aclrtPointerGetAttributes(const void *ptr, aclrtPtrAttributes *attributes);
/** Queue a write of a 64-bit value to device memory on a stream; flag must be 0. */
aclError aclrtValueWrite(void *devAddr, uint64_t value, uint32_t flag, aclrtStream stream);
/** Queue a wait on a stream until the 64-bit value at devAddr meets value (flag: ACL_STREAM_WAIT_VALUE_*). */
aclError aclrtValueWait(void *devAddr, uint64_t value, uint32_t flag, aclrtStream stream);

/* ---- Events and IPC events ---- */

/** Create an event on the current device. */
aclError aclrtCreateEvent(aclrtEvent *event);
/** Create an event with ACL_EVENT_* flags. */
aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag);
/** Create an event with ACL_EVENT_* flags that may be recorded again and again (ACL_EVENT_IPC lives here). */
aclError aclrtCreateEventExWithFlag(aclrtEvent *event, uint32_t flag);
/** Destroy an event; every process that opened an IPC event destroys its handle. */
aclError aclrtDestroyEvent(aclrtEvent event);
/** Queue a record of the event on a stream: it completes when the stream reaches it. */
aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream);
/** Queue a wait on a stream until the event's latest record (as of this call) has completed. */
aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event);
/** Block the host until the event's latest record has completed. */
aclError aclrtSynchronizeEvent(aclrtEvent event);
/** Whether the event's latest record has completed. */
aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status);
/** Milliseconds between the completions of two recorded events. */
aclError aclrtEventElapsedTime(float *ms, aclrtEvent startEvent, aclrtEvent endEvent);
/** Export an event created with ACL_EVENT_IPC as a handle other processes open. */
aclError aclrtIpcGetEventHandle(aclrtEvent event, aclrtIpcEventHandle *handle);
/** Open an event another process exported. */
aclError aclrtIpcOpenEventHandle(aclrtIpcEventHandle handle, aclrtEvent *event);

/* ---- Virtual memory management ---- */

/** Reserve a range of device virtual addresses. alignment must be 0; flags 0 (normal) or 1 (huge pages). */
aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment, void *expectPtr, uint64_t flags);
/** Release a range from aclrtReserveMemAddress; nothing may be mapped in it. */
aclError aclrtReleaseMemAddress(void *virPtr);
/** Allocate physical device memory; size a multiple of the granularity, flags 0. */
aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop,
                             uint64_t flags);
/** Free physical memory; if it is still mapped, the release happens at the unmap. */
aclError aclrtFreePhysical(aclrtDrvMemHandle handle);
/** Map a whole physical allocation (offset 0, flags 0) at virPtr inside a reserved range. */
aclError aclrtMapMem(void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle, uint64_t flags);
/** Unmap what aclrtMapMem mapped at virPtr. */
aclError aclrtUnmapMem(void *virPtr);
/** Grant access to a mapped range; virPtr and size as given to aclrtMapMem. */
aclError aclrtMemSetAccess(void *virPtr, size_t size, aclrtMemAccessDesc *desc, size_t count);
/** The size that physical allocations and mappings must be multiples of. */
aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop, aclrtMemGranularityOptions option,
                                          size_t *granularity);

/* ---- Sharing physical memory between processes ---- */

/** Export a physical allocation as a 64-bit shareable handle; once per handle (one-to-one). */
aclError aclrtMemExportToShareableHandle(aclrtDrvMemHandle handle, aclrtMemHandleType handleType, uint64_t flags,
                                         uint64_t *shareableHandle);
/** Import a shareable handle exported by another process, as a handle on deviceId. */
aclError aclrtMemImportFromShareableHandle(uint64_t shareableHandle, int32_t deviceId, aclrtDrvMemHandle *handle);
/** Whitelist importer pids (from aclrtDeviceGetBareTgid) for a shareable handle. */
aclError aclrtMemSetPidToShareableHandle(uint64_t shareableHandle, int32_t *pid, size_t pidNum);
/** Export as shareType: a uint64_t (DEFAULT) or an aclrtMemFabricHandle (FABRIC) at shareableHandle. */
aclError aclrtMemExportToShareableHandleV2(aclrtDrvMemHandle handle, uint64_t flags,
                                           aclrtMemSharedHandleType shareType, void *shareableHandle);
/** Import a DEFAULT or FABRIC shareable handle on the current device; flags must be 0. */
aclError aclrtMemImportFromShareableHandleV2(void *shareableHandle, aclrtMemSharedHandleType shareType,
                                             uint64_t flags, aclrtDrvMemHandle *handle);
/** Whitelist importer pids for a DEFAULT or FABRIC shareable handle. */
aclError aclrtMemSetPidToShareableHandleV2(void *shareableHandle, aclrtMemSharedHandleType shareType, int32_t *pid,
                                           size_t pidNum);

/* ---- Sharing aclrtMalloc memory by key ---- */

/** Export a whole aclrtMalloc allocation under a key (len 65 bytes). */
aclError aclrtIpcMemGetExportKey(void *devPtr, size_t size, char *key, size_t len, uint64_t flags);
/** Whitelist importer pids for a key. */
aclError aclrtIpcMemSetImportPid(const char *key, int32_t *pid, size_t num);
/** Import memory exported by another process under key. */
aclError aclrtIpcMemImportByKey(void **devPtr, const char *key, uint64_t flags);
/** Close a key: importers first, then the exporter. */
aclError aclrtIpcMemClose(const char *key);

/* ---- Notify and IPC notify ---- */

/** Create a notify on the current device. */
aclError aclrtCreateNotify(aclrtNotify *notify, uint64_t flag);
/** Destroy a notify; every process that created or imported it must. */
aclError aclrtDestroyNotify(aclrtNotify notify);
/** Queue a record (set) of the notify on a stream. */
aclError aclrtRecordNotify(aclrtNotify notify, aclrtStream stream);
/** Queue a wait for the notify, then its reset, on a stream; only the creating process may wait. */
aclError aclrtWaitAndResetNotify(aclrtNotify notify, aclrtStream stream, uint32_t timeout);
/** The notify's id on its device. */
aclError aclrtGetNotifyId(aclrtNotify notify, uint32_t *notifyId);
/** Export a notify under a key (len at least 65 bytes). */
aclError aclrtNotifyGetExportKey(aclrtNotify notify, char *key, size_t len, uint64_t flags);
/** Whitelist importer pids for an exported notify. */
aclError aclrtNotifySetImportPid(aclrtNotify notify, int32_t *pid, size_t num);
/** Import a notify exported by another process. */
aclError aclrtNotifyImportByKey(aclrtNotify *notify, const char *key, uint64_t flags);

#ifdef __cplusplus
}
#endif

#endif /* ACLSHM_ACL_H */
