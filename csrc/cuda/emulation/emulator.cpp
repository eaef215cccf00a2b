// The CUDA emulator (cuda_emulation.h): runs a launch's blocks one after
// another on the calling thread, a block's threads as cooperative fibers,
// and checks what a GPU would leave undefined.
//
// Fibers, not OS threads: a block of 256 threads switches only where the
// kernel synchronizes, at the cost of a function call (a hand-written stack
// switch on x86-64, ucontext elsewhere), so the whole CUDA op sweep runs in
// seconds on 2 cores; 256 OS threads a block meeting at barriers cost
// microseconds per switch.
#include "cuda_emulation.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// The fiber switch: hand-written on x86-64; ucontext elsewhere, or where
// MNV3_EMU_UCONTEXT is defined (checked once that way on x86-64: the emulated
// sweep passed, 1.5x slower; not in CI, where ASan's swapcontext interceptor,
// which clears a stack's shadow on every switch, made it crawl).
#if defined(__x86_64__) && !defined(MNV3_EMU_UCONTEXT)
#define MNV3_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define MNV3_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include "emulator.h"

#if defined(MNV3_EMU_ASM_SWITCH)
// mnv3_emu_switch(save, next): saves the callee-saved registers, the SSE and
// x87 control words and the stack pointer into *save, then resumes the
// context whose stack pointer is next (System V x86-64 ABI).
extern "C" void mnv3_emu_switch(void** save, void* next);
asm(R"(
  .text
  .p2align 4
  .globl mnv3_emu_switch
  .hidden mnv3_emu_switch
  .type mnv3_emu_switch, @function
mnv3_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw 12(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw 12(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mnv3_emu_switch, .-mnv3_emu_switch
)");
#endif

namespace mnv3 {
namespace emu {
namespace {

#if defined(MNV3_EMU_ASAN)
constexpr size_t kStackBytes = 1024 * 1024;  // ASan's frames are larger
#else
constexpr size_t kStackBytes = 256 * 1024;
#endif
constexpr size_t kCanaryBytes = 4096;     // checked after dynamic shared memory (not under ASan)
constexpr unsigned char kPoison = 0xff;   // every fp32 / fp16 / bf16 word of it is a NaN
constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute's opt-in
constexpr unsigned kWarp = 32;

enum class State { Runnable, Barrier, Shuffle, Exited, Failed };

// A fiber's stack: mmap'd, with an inaccessible guard page below it so an
// overflow faults instead of writing over the neighbouring stack.
struct Stack {
  char* base = nullptr;  // the guard page
  size_t bytes = 0;
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    bytes = kStackBytes + page;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      fprintf(stderr, "mnv3 emulator: cannot map a fiber stack\n");
      abort();
    }
    base = static_cast<char*>(p);
    mprotect(base, page, PROT_NONE);
  }
  ~Stack() { munmap(base, bytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* bottom() const { return base + (bytes - kStackBytes); }
};

struct Context {
#if defined(MNV3_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

struct Fiber {
  Context ctx;
  Stack* stack = nullptr;
  State state = State::Runnable;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  // Where it waits (__syncthreads or a shuffle), and the shuffle's operands.
  const char* file = "";
  int line = 0;
  Shuffle kind = Shuffle::Down;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t value = 0, result = 0;
};

struct LaunchState {
  dim3 grid, block;
  size_t smem = 0;
  uint3 block_idx{0, 0, 0};
  unsigned threads = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  Context scheduler;
  unsigned char* shared = nullptr;
  std::string error;
#if defined(MNV3_EMU_ASAN)
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_bytes = 0;
#endif
};

thread_local LaunchState* tl_launch = nullptr;
thread_local cudaError_t tl_error = cudaSuccess;
thread_local std::string tl_error_text;

std::mutex log_mutex;
std::vector<LaunchRecord> launch_records;

void fiber_main();

void make_context(Fiber& f) {
#if defined(MNV3_EMU_ASAN)
  __asan_unpoison_memory_region(f.stack->bottom(), kStackBytes);  // frames a failed fiber left behind
#endif
#if defined(MNV3_EMU_ASM_SWITCH)
  // The frame mnv3_emu_switch pops: control words, r15..r12, rbx, rbp, then
  // the return address (fiber_main), 16-byte aligned so fiber_main starts
  // with the stack alignment of a called function.
  auto* top = reinterpret_cast<uint64_t*>(f.stack->bottom() + kStackBytes);
  uint64_t* ret = top - 2;
  ret[0] = reinterpret_cast<uint64_t>(&fiber_main);
  ret[1] = 0;
  uint64_t* sp = ret - 8;
  for (int i = 0; i < 8; ++i) sp[i] = 0;
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, 4);
  memcpy(reinterpret_cast<char*>(sp) + 12, &fpcw, 2);
  f.ctx.sp = sp;
#else
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = f.stack->bottom();
  f.ctx.uc.uc_stack.ss_size = kStackBytes;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, &fiber_main, 0);
#endif
}

void switch_context(Context& from, Context& to) {
#if defined(MNV3_EMU_ASM_SWITCH)
  mnv3_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// Scheduler -> fiber f, until f waits, exits or fails.
void resume(LaunchState& L, Fiber& f) {
  L.current = &f;
#if defined(MNV3_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack->bottom(), kStackBytes);
#endif
  switch_context(L.scheduler, f.ctx);
#if defined(MNV3_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  L.current = nullptr;
}

// The running fiber -> the scheduler.  `final`: the fiber will not run again.
void yield_to_scheduler(bool final) {
  LaunchState& L = *tl_launch;
  Fiber& f = *L.current;
#if defined(MNV3_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(final ? nullptr : &fake, L.scheduler_stack, L.scheduler_stack_bytes);
#endif
  switch_context(f.ctx, L.scheduler);
#if defined(MNV3_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

std::string dims(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

std::string where(const char* file, int line) {
  const char* slash = strrchr(file, '/');
  return std::string(slash ? slash + 1 : file) + ":" + std::to_string(line);
}

std::string thread_name(const LaunchState& L, const Fiber& f) {
  return "thread " + dims(f.tid.x, f.tid.y, f.tid.z) + " of block " +
         dims(L.block_idx.x, L.block_idx.y, L.block_idx.z);
}

std::string waits_at(const Fiber& f) {
  switch (f.state) {
    case State::Barrier: return "waits at __syncthreads (" + where(f.file, f.line) + ")";
    case State::Shuffle: {
      char mask[16];
      snprintf(mask, sizeof(mask), "0x%08x", f.mask);
      return "waits at a shuffle with mask " + std::string(mask) + " (" + where(f.file, f.line) + ")";
    }
    case State::Exited: return "exited";
    case State::Failed: return "failed";
    case State::Runnable: break;
  }
  return "runs";
}

std::string hex(unsigned v) {
  char s[16];
  snprintf(s, sizeof(s), "0x%08x", v);
  return s;
}

// Records the launch's first error; the scheduler stops the launch.
void set_error(LaunchState& L, const std::string& what) {
  if (L.error.empty()) L.error = what;
}

// The running thread failed a check: record it and never run it again.
[[noreturn]] void fail_current(const std::string& what) {
  LaunchState& L = *tl_launch;
  Fiber& f = *L.current;
  set_error(L, thread_name(L, f) + ": " + what);
  f.state = State::Failed;
  yield_to_scheduler(true);
  abort();  // never resumed
}

void fiber_main() {
  LaunchState& L = *tl_launch;
#if defined(MNV3_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &L.scheduler_stack, &L.scheduler_stack_bytes);
#endif
  try {
    (*L.body)();
  } catch (const std::exception& e) {
    set_error(L, thread_name(L, *L.current) + ": the kernel threw: " + e.what());
  }
  L.current->state = State::Exited;
  yield_to_scheduler(true);
  abort();  // never resumed
}

// Lane l of a shuffle: the lane it reads, or -1 when the operands are invalid.
int shuffle_source(const Fiber& f, unsigned lane) {
  const int w = f.width;
  if (w < 1 || w > 32 || (w & (w - 1)) != 0) return -1;
  const int l = static_cast<int>(lane), seg = l / w * w;
  switch (f.kind) {
    case Shuffle::Down: return l - seg + f.arg < w ? l + f.arg : l;
    case Shuffle::Up: return l - seg >= f.arg ? l - f.arg : l;
    case Shuffle::Xor: {
      const int s = l ^ f.arg;
      return s / w == l / w ? s : l;
    }
    case Shuffle::Idx: return seg + ((f.arg % w) + w) % w;
  }
  return -1;
}

// Called when f arrives at a shuffle: completes the warp's shuffle once every
// lane its mask names has arrived.
void try_shuffle(LaunchState& L, Fiber& f) {
  const unsigned base = f.linear / kWarp * kWarp, lane = f.linear % kWarp;
  const unsigned lanes = std::min(kWarp, L.threads - base);
  if (!((f.mask >> lane) & 1u)) {
    set_error(L, thread_name(L, f) + ": a shuffle (" + where(f.file, f.line) + ") with mask " + hex(f.mask) +
                     ", which leaves out the calling lane " + std::to_string(lane));
    return;
  }
  if (lanes < kWarp && (f.mask >> lanes) != 0) {
    set_error(L, thread_name(L, f) + ": a shuffle (" + where(f.file, f.line) + ") with mask " + hex(f.mask) +
                     " names lanes " + std::to_string(lanes) + ".. of a warp that has " + std::to_string(lanes) +
                     " threads (the block has " + std::to_string(L.threads) + ")");
    return;
  }
  for (unsigned l = 0; l < lanes; ++l) {
    if (!((f.mask >> l) & 1u)) continue;
    const Fiber& o = L.fibers[base + l];
    if (o.state == State::Exited || o.state == State::Failed) {
      set_error(L, thread_name(L, f) + ": a shuffle (" + where(f.file, f.line) + ") with mask " + hex(f.mask) +
                       " names lane " + std::to_string(l) + ", which " + waits_at(o));
      return;
    }
    if (o.state != State::Shuffle) return;  // not arrived yet
  }
  for (unsigned l = 0; l < lanes; ++l) {
    if (!((f.mask >> l) & 1u)) continue;
    Fiber& o = L.fibers[base + l];
    if (o.mask != f.mask) {
      set_error(L, thread_name(L, f) + ": a shuffle (" + where(f.file, f.line) + ") with mask " + hex(f.mask) +
                       " meets lane " + std::to_string(l) + ", which " + waits_at(o));
      return;
    }
    const int src = shuffle_source(o, l);
    if (src < 0) {
      set_error(L, thread_name(L, o) + ": a shuffle (" + where(o.file, o.line) + ") with width " +
                       std::to_string(o.width) + " (a power of 2 from 1 to 32)");
      return;
    }
    if (!((f.mask >> src) & 1u)) {
      set_error(L, thread_name(L, o) + ": a shuffle (" + where(o.file, o.line) + ") reads lane " +
                       std::to_string(src) + ", which its mask " + hex(o.mask) + " does not name");
      return;
    }
    o.result = L.fibers[base + static_cast<unsigned>(src)].value;
  }
  for (unsigned l = 0; l < lanes; ++l)
    if ((f.mask >> l) & 1u) L.fibers[base + l].state = State::Runnable;
}

// Nothing can run and some threads wait: release a barrier every live thread
// reached, or name what is stuck.
void resolve_waits(LaunchState& L) {
  const Fiber* barrier = nullptr;
  const Fiber* exited = nullptr;
  for (const Fiber& f : L.fibers) {
    if (f.state == State::Shuffle) {
      const unsigned base = f.linear / kWarp * kWarp;
      for (unsigned l = 0; l < kWarp && base + l < L.threads; ++l) {
        const Fiber& o = L.fibers[base + l];
        if (((f.mask >> l) & 1u) && (o.state != State::Shuffle || o.mask != f.mask)) {
          set_error(L, thread_name(L, f) + " " + waits_at(f) + " for lane " + std::to_string(l) + ", which " +
                           waits_at(o));
          return;
        }
      }
      set_error(L, thread_name(L, f) + " " + waits_at(f) + " that cannot complete");
      return;
    }
    if (f.state == State::Barrier && barrier == nullptr) barrier = &f;
    if (f.state == State::Exited && exited == nullptr) exited = &f;
  }
  if (barrier == nullptr) return;  // every thread exited
  if (exited != nullptr) {
    set_error(L, thread_name(L, *exited) + " exited while other threads of its block wait at __syncthreads (" +
                     where(barrier->file, barrier->line) + "), e.g. " + thread_name(L, *barrier) +
                     ": a __syncthreads must be reached by every thread of the block");
    return;
  }
  for (const Fiber& f : L.fibers) {
    if (f.line != barrier->line || strcmp(f.file, barrier->file) != 0) {
      set_error(L, thread_name(L, f) + " waits at __syncthreads (" + where(f.file, f.line) + ") while " +
                       thread_name(L, *barrier) + " waits at another one (" + where(barrier->file, barrier->line) +
                       ")");
      return;
    }
  }
  for (Fiber& f : L.fibers) f.state = State::Runnable;
}

bool canary_intact(const LaunchState& L, size_t* first_bad) {
#if defined(MNV3_EMU_ASAN)
  (void)L;
  (void)first_bad;
  return true;  // ASan guards the exact-size allocation instead
#else
  const unsigned char* c = L.shared + L.smem;
  for (size_t i = 0; i < kCanaryBytes; ++i) {
    if (c[i] != kPoison) {
      *first_bad = i;
      return false;
    }
  }
  return true;
#endif
}

std::vector<std::unique_ptr<Stack>>& stack_pool() {
  static thread_local std::vector<std::unique_ptr<Stack>> pool;
  return pool;
}

void run_block(LaunchState& L) {
  auto& pool = stack_pool();
  while (pool.size() < L.threads) pool.emplace_back(new Stack());
  L.fibers.assign(L.threads, Fiber());
  for (unsigned i = 0; i < L.threads; ++i) {
    Fiber& f = L.fibers[i];
    f.stack = pool[i].get();
    f.linear = i;
    f.tid = uint3{i % L.block.x, i / L.block.x % L.block.y, i / (L.block.x * L.block.y)};
    make_context(f);
  }
#if defined(MNV3_EMU_ASAN)
  memset(L.shared, kPoison, L.smem);
#else
  memset(L.shared, kPoison, L.smem + kCanaryBytes);  // uninitialized shared memory reads as NaN
#endif
  for (;;) {
    bool ran = false;
    for (Fiber& f : L.fibers) {
      if (f.state != State::Runnable) continue;
      ran = true;
      resume(L, f);
      size_t bad = 0;
      if (L.error.empty() && !canary_intact(L, &bad)) {
        set_error(L, thread_name(L, f) + " wrote past the end of dynamic shared memory (" +
                         std::to_string(L.smem) + " bytes asked by the launch): byte " +
                         std::to_string(L.smem + bad));
      }
      if (L.error.empty() && f.state == State::Shuffle) try_shuffle(L, f);
      if (!L.error.empty()) return;
    }
    if (ran) continue;
    resolve_waits(L);
    if (!L.error.empty()) return;
    bool live = false;
    for (const Fiber& f : L.fibers) live = live || f.state == State::Runnable;
    if (!live) return;  // every thread exited
  }
}

std::string config_error(dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0)
    return "a grid or block dimension is 0";
  if (block.x > 1024 || block.y > 1024 || block.z > 64)
    return "block " + dims(block.x, block.y, block.z) + " is over CUDA's limits (1024, 1024, 64)";
  if (threads > 1024)
    return "block " + dims(block.x, block.y, block.z) + " has " + std::to_string(threads) +
           " threads, over CUDA's 1024 a block";
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return "grid " + dims(grid.x, grid.y, grid.z) + " is over CUDA's limits (2^31 - 1, 65535, 65535)";
  if (smem > kMaxDynamicShared)
    return std::to_string(smem) + " bytes of dynamic shared memory, over the 48 KB a kernel gets without "
           "cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)";
  return "";
}

void set_last_error(cudaError_t code, const std::string& text) {
  if (tl_error != cudaSuccess) return;  // the first error sticks until read
  tl_error = code;
  tl_error_text = text;
}

#if defined(MNV3_EMU_ASAN)
// After an AddressSanitizer report (whose stack names the kernel): which
// emulated thread made the access.
void report_thread_on_death() {
  const LaunchState* L = tl_launch;
  if (L == nullptr || L->current == nullptr) return;
  fprintf(stderr, "mnv3 emulator: the access above was made by %s [grid %s, block %s, %zu bytes of dynamic shared memory]\n",
          thread_name(*L, *L->current).c_str(), dims(L->grid.x, L->grid.y, L->grid.z).c_str(),
          dims(L->block.x, L->block.y, L->block.z).c_str(), L->smem);
}

const bool death_callback_set = (__sanitizer_set_death_callback(&report_thread_on_death), true);
#endif

}  // namespace

const uint3& thread_idx() { return tl_launch->current->tid; }
const uint3& block_idx() { return tl_launch->block_idx; }
const dim3& block_dim() { return tl_launch->block; }
const dim3& grid_dim() { return tl_launch->grid; }
void* dynamic_shared() { return tl_launch->shared; }

void syncthreads(const char* file, int line) {
  Fiber& f = *tl_launch->current;
  f.state = State::Barrier;
  f.file = file;
  f.line = line;
  yield_to_scheduler(false);
}

uint64_t shuffle(const char* file, int line, Shuffle kind, unsigned mask, uint64_t value, int arg, int width) {
  Fiber& f = *tl_launch->current;
  f.state = State::Shuffle;
  f.file = file;
  f.line = line;
  f.kind = kind;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  yield_to_scheduler(false);
  return f.result;
}

void check_aligned(const void* p, size_t bytes, const char* what) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (bytes > 1 && a % bytes != 0) {
    char msg[160];
    snprintf(msg, sizeof(msg), "%s of %zu bytes at %p, which is not %zu-byte aligned", what, bytes, p, bytes);
    if (tl_launch != nullptr && tl_launch->current != nullptr) fail_current(msg);
    fprintf(stderr, "mnv3 emulator: %s (outside a kernel)\n", msg);
    abort();
  }
}

void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    if (launch_records.size() >= kMaxLaunchRecords)
      launch_records.erase(launch_records.begin(), launch_records.begin() + kMaxLaunchRecords / 2);
    launch_records.push_back(LaunchRecord{"", {grid.x, grid.y, grid.z}, {block.x, block.y, block.z}, smem});
  }
  const std::string bad = config_error(grid, block, smem);
  if (!bad.empty()) {
    set_last_error(cudaErrorInvalidConfiguration, "invalid launch configuration: " + bad);
    return;
  }
  LaunchState L;
  L.grid = grid;
  L.block = block;
  L.smem = smem;
  L.threads = block.x * block.y * block.z;
  L.body = &body;
#if defined(MNV3_EMU_ASAN)
  std::unique_ptr<unsigned char[]> shared(new unsigned char[smem]);  // exact: ASan's redzone follows it
#else
  std::unique_ptr<unsigned char[]> shared(new unsigned char[smem + kCanaryBytes]);
#endif
  L.shared = shared.get();
  LaunchState* const outer = tl_launch;
  tl_launch = &L;
  for (unsigned z = 0; z < grid.z && L.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && L.error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && L.error.empty(); ++x) {
        L.block_idx = uint3{x, y, z};
        run_block(L);
      }
  tl_launch = outer;
  if (!L.error.empty()) {
    set_last_error(cudaErrorLaunchFailure, "emulator: " + L.error + " [grid " + dims(grid.x, grid.y, grid.z) +
                                               ", block " + dims(block.x, block.y, block.z) + ", " +
                                               std::to_string(smem) + " bytes of dynamic shared memory]");
  }
}

void name_last_launch(const char* kernel) {
  std::lock_guard<std::mutex> lock(log_mutex);
  if (!launch_records.empty() && launch_records.back().kernel.empty()) launch_records.back().kernel = kernel;
}

std::vector<LaunchRecord> take_launch_records() {
  std::lock_guard<std::mutex> lock(log_mutex);
  std::vector<LaunchRecord> out;
  out.swap(launch_records);
  return out;
}

}  // namespace emu
}  // namespace mnv3

cudaError_t cudaGetLastError() {
  const cudaError_t e = mnv3::emu::tl_error;
  mnv3::emu::tl_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaSuccess) return "no error";
  return mnv3::emu::tl_error_text.c_str();
}
