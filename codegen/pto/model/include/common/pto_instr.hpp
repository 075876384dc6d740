// attnc's CPU model of the PTO tile ISA (the subset ptoas 0.1.1 emits for attnc kernels).
// Written for attnc from the public tile-API names and semantics; not pto-isa.
//
// * Memory: one byte array per on-chip space (UB 192 KB, L1 512 KB, L0A/L0B 64 KB, L0C 128 KB, A2/A3 sizes);
//   TASSIGN places a tile at ptoas's planned byte address (out of range -> model error). Every tile is a
//   row-major Rows x Cols matrix (fractal layouts are not modelled). GM is host memory.
// * Pipes: TLOAD = MTE2, TMOV (L1 -> L0) = MTE1, TMATMUL = M, TSTORE = MTE3 (FIX from L0C), vector ops = V.
//   Hazard check: every byte remembers its last writer and readers (pipe, instruction number; stored as runs
//   of bytes with the same state, so an access costs its runs, not its bytes; hazards still count bytes). An access by
//   pipe P to a byte another pipe Q touched (one of them writing) is a hazard unless P is ordered after that
//   instruction: by wait_flag(Q, P) on a set_flag(Q, P) issued after it, or pipe_barrier(PIPE_ALL). Dependent
//   vector instructions also need pipe_barrier(PIPE_V) between them; other pipes are in order. A wait with no
//   pending set (deadlock on hardware) and sets never waited for are model errors. GM bytes of the kernel's
//   inputs (read only: a store into one is a model error) carry no hazard state.
// * Numerics: f16 = _Float16 (round to nearest even on every store), vector math in float, matmul products
//   of f16 exact in float and accumulated in float in k order.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>
#include <algorithm>

#define __global__
#define AICORE
#define __gm__

typedef _Float16 half;

enum pipe_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_FIX, PIPE_ALL, PIPE_MTE4, PIPE_MTE5, PIPE_V2 };
enum event_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };

namespace pto_model {
constexpr int NPIPE = 7;  // S V M MTE1 MTE2 MTE3 FIX
static const char* pipe_name(int p) {
  static const char* n[] = {"S", "V", "M", "MTE1", "MTE2", "MTE3", "FIX", "ALL"};
  return p < 8 ? n[p] : "?";
}

enum Space { UB = 0, L1, L0A, L0B, L0C, NSPACE };
static const size_t kCapacity[NSPACE] = {192 * 1024, 512 * 1024, 64 * 1024, 64 * 1024, 128 * 1024};

struct ByteState {
  int writer = -1;
  long wclock = 0;
  long rclock[NPIPE] = {0, 0, 0, 0, 0, 0, 0};
  bool operator==(const ByteState& o) const {
    return writer == o.writer && wclock == o.wclock && std::equal(rclock, rclock + NPIPE, o.rclock);
  }
};

// byte address -> state as runs [start, end) of equal state; an address in no run has the default state
struct Run { size_t end; ByteState st; };
using RunMap = std::map<size_t, Run>;

struct Model {
  std::vector<uint8_t> mem[NSPACE];
  RunMap state[NSPACE];
  RunMap gm_state;
  // the kernel's inputs [begin, end): nothing writes them, so their bytes need no hazard state (a flash weight
  // is tens of MB: per-byte state for it took 8.5 GB); a store into one is a model error
  std::vector<std::pair<uintptr_t, uintptr_t>> inputs;
  long clock[NPIPE];
  long know[NPIPE][NPIPE];
  std::deque<std::vector<long>> flags[NPIPE][NPIPE][8];
  long hazards = 0, errors = 0;
  std::vector<std::string> notes;
  int block = 0;
  std::string op;

  Model() {
    for (int s = 0; s < NSPACE; ++s) mem[s].assign(kCapacity[s], 0xA5);
    reset();
  }
  void reset() {
    for (int s = 0; s < NSPACE; ++s) state[s].clear();
    gm_state.clear();
    for (int p = 0; p < NPIPE; ++p) { clock[p] = 0; for (int q = 0; q < NPIPE; ++q) know[p][q] = 0; }
    for (auto& a : flags) for (auto& b : a) for (auto& c : b) c.clear();
  }
  void note(const std::string& what, bool hazard) {
    (hazard ? hazards : errors)++;
    if (notes.size() < 40) notes.push_back("block " + std::to_string(block) + ": " + op + ": " + what);
  }
  // one instruction of `pipe` starts: returns its number
  long issue(int pipe) { return ++clock[pipe]; }
  bool ordered(int p, int q, long i) {
    if (q == p && p != PIPE_V) return true;
    return know[p][q] >= i;
  }
  // the access to each of `n` bytes that share the state `b` (as n single-byte touches: a hazard counts per byte)
  void touch(ByteState& b, size_t n, int pipe, long i, bool write) {
    std::vector<std::string> found;
    if (b.writer >= 0 && !ordered(pipe, b.writer, b.wclock) && !(b.writer == pipe && b.wclock == i)) {
      found.push_back(std::string(write ? "WAW" : "RAW") + " with " + pipe_name(b.writer) + " -> " + pipe_name(pipe));
      b.writer = -1;  // count each unordered pair once
    }
    if (write) {
      for (int q = 0; q < NPIPE; ++q)
        if (b.rclock[q] && !ordered(pipe, q, b.rclock[q]) && !(q == pipe && b.rclock[q] == i)) {
          found.push_back(std::string("WAR with ") + pipe_name(q) + " -> " + pipe_name(pipe));
          b.rclock[q] = 0;
        }
      b.writer = pipe; b.wclock = i;
      for (int q = 0; q < NPIPE; ++q) b.rclock[q] = 0;
    } else {
      b.rclock[pipe] = i;
    }
    for (size_t k = 0; k < n && !found.empty(); ++k) {
      if (notes.size() >= 40) { hazards += (long)((n - k) * found.size()); break; }
      for (auto& w : found) note(w, true);
    }
  }
  // the run holding `a` starts at `a` (split; a gap before the next run gets a default run up to `limit`)
  RunMap::iterator split(RunMap& m, size_t a, size_t limit) {
    auto it = m.upper_bound(a);
    if (it != m.begin()) {
      auto prev = std::prev(it);
      if (prev->first == a) return prev;
      if (prev->second.end > a) {
        Run tail = prev->second;
        prev->second.end = a;
        return m.emplace_hint(it, a, tail);
      }
    }
    size_t end = it == m.end() ? limit : std::min(limit, it->first);
    return m.emplace_hint(it, a, Run{end, ByteState()});
  }
  void access_runs(RunMap& m, size_t a, size_t bytes, int pipe, long i, bool write) {
    if (!bytes) return;
    size_t e = a + bytes;
    auto it = split(m, a, e);
    while (true) {
      if (it->second.end > e) {  // the last run reaches past the access: keep its tail as is
        Run tail = it->second;
        it->second.end = e;
        m.emplace_hint(std::next(it), e, tail);
      }
      touch(it->second.st, it->second.end - it->first, pipe, i, write);
      size_t next = it->second.end;
      auto prev = it;
      if (it != m.begin()) {  // merge with the run before when both now hold the same state
        auto before = std::prev(it);
        if (before->second.end == it->first && before->second.st == it->second.st) {
          before->second.end = it->second.end;
          m.erase(it);
          prev = before;
        }
      }
      if (next >= e) {
        auto after = std::next(prev);
        if (after != m.end() && after->first == prev->second.end && after->second.st == prev->second.st) {
          prev->second.end = after->second.end;
          m.erase(after);
        }
        return;
      }
      it = std::next(prev);
      if (it == m.end() || it->first != next) it = split(m, next, e);
    }
  }
  void access(int pipe, long i, int space, size_t addr, size_t bytes, bool write) {
    if (addr + bytes > kCapacity[space]) { note("access beyond the buffer capacity", false); return; }
    access_runs(state[space], addr, bytes, pipe, i, write);
  }
  void input(const void* p, size_t bytes) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    inputs.emplace_back(a, a + bytes);
  }
  void access_gm(int pipe, long i, const void* p, size_t bytes, bool write) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (auto& r : inputs)
      if (a < r.second && a + bytes > r.first) {
        if (write) note("store into a kernel input", false);
        return;
      }
    access_runs(gm_state, a, bytes, pipe, i, write);
  }
  void set_flag(int src, int dst, int ev) {
    std::vector<long> snap(know[src], know[src] + NPIPE);
    snap[src] = clock[src];
    flags[src][dst][ev].push_back(snap);
  }
  void wait_flag(int src, int dst, int ev) {
    auto& q = flags[src][dst][ev];
    if (q.empty()) { op = "wait_flag"; note(std::string("wait without a pending set ") + pipe_name(src) + " -> " + pipe_name(dst), false); return; }
    for (int r = 0; r < NPIPE; ++r) know[dst][r] = std::max(know[dst][r], q.front()[r]);
    q.pop_front();
  }
  void barrier(int p) {
    if (p == PIPE_ALL) {
      for (int a = 0; a < NPIPE; ++a) for (int b = 0; b < NPIPE; ++b) know[a][b] = clock[b];
    } else if (p < NPIPE) {
      know[p][p] = clock[p];
    }
  }
  void end_block() {
    for (int a = 0; a < NPIPE; ++a) for (int b = 0; b < NPIPE; ++b) for (int e = 0; e < 8; ++e)
      if (!flags[a][b][e].empty()) { op = "end"; note(std::string("set_flag never waited ") + pipe_name(a) + " -> " + pipe_name(b), false); }
  }
};
inline Model& model() { static Model m; return m; }
}  // namespace pto_model

inline void set_flag(pipe_t s, pipe_t d, event_t e) { pto_model::model().set_flag(s, d, e); }
inline void wait_flag(pipe_t s, pipe_t d, event_t e) { pto_model::model().wait_flag(s, d, e); }
inline void pipe_barrier(pipe_t p) { pto_model::model().barrier(p); }
inline int64_t get_block_idx() { return pto_model::model().block; }

namespace pto {
enum class TileType { Vec, Mat, Left, Right, Acc, Bias };
enum class BLayout { RowMajor, ColMajor };
enum class SLayout { NoneBox, RowMajor, ColMajor };
enum class PadValue { Null, Zero, Max, Min };
// ptoas 0.1.1 writes `bool v = RoundMode::CAST_RINT;` (the mode typed bool): a plain constant keeps that legal
struct RoundMode { static constexpr int CAST_RINT = 0; };

template <int... D> struct Shape {};
template <int... D> struct Stride {};
template <int... D> constexpr int last2(int which) {  // which = 0: second to last, 1: last
  constexpr int v[] = {D...};
  constexpr int n = sizeof...(D);
  return which == 0 ? (n >= 2 ? v[n - 2] : 1) : v[n - 1];
}
template <typename S> struct Dims;
template <int... D> struct Dims<Shape<D...>> { static constexpr int r = last2<D...>(0), c = last2<D...>(1); };
template <int... D> struct Dims<Stride<D...>> { static constexpr int r = last2<D...>(0), c = last2<D...>(1); };

template <typename T, typename S, typename St> struct GlobalTensor {
  using elem = T;
  T* p;
  static constexpr int rows = Dims<S>::r, cols = Dims<S>::c, rs = Dims<St>::r, cs = Dims<St>::c;
  GlobalTensor(T* ptr, S, St) : p(ptr) {}
  T& at(int r, int c) const { return p[(long)r * rs + (long)c * cs]; }
};

constexpr pto_model::Space space_of(TileType t) {
  return t == TileType::Vec ? pto_model::UB : t == TileType::Mat ? pto_model::L1 : t == TileType::Left ? pto_model::L0A
       : t == TileType::Right ? pto_model::L0B : pto_model::L0C;
}

template <TileType TT, typename T, int R, int C, BLayout BL, int VR, int VC, SLayout SL, int F, PadValue PV>
struct Tile {
  using elem = T;
  static constexpr int rows = R, cols = C, vrows = VR, vcols = VC;
  static constexpr TileType type = TT;
  long addr = -1;
  T* data() const { return reinterpret_cast<T*>(pto_model::model().mem[space_of(TT)].data() + addr); }
  T& at(int r, int c) const { return data()[(long)r * C + c]; }
  size_t bytes() const { return sizeof(T) * (size_t)R * C; }
};

template <typename TileT> void TASSIGN(TileT& t, int64_t addr) {
  t.addr = addr;
  if (addr < 0 || addr + t.bytes() > pto_model::kCapacity[space_of(TileT::type)]) {
    pto_model::model().op = "TASSIGN";
    pto_model::model().note("tile outside its buffer", false);
    t.addr = 0;
  }
}
}  // namespace pto

namespace pto_model {
template <typename TileT> void read(int pipe, long i, const TileT& t) {
  model().access(pipe, i, pto::space_of(TileT::type), t.addr, t.bytes(), false);
}
template <typename TileT> void write(int pipe, long i, const TileT& t) {
  model().access(pipe, i, pto::space_of(TileT::type), t.addr, t.bytes(), true);
}
inline void shape_error(const char* what) { model().note(std::string("shape mismatch: ") + what, false); }
template <typename T> float f(T x) { return static_cast<float>(x); }
}  // namespace pto_model

namespace pto {
using namespace pto_model;

// the GM bytes of a view, in address order within each row (a row of unit column stride is one access)
template <typename G> void gm_rows(int pipe, long i, const G& g, bool write) {
  using E = typename G::elem;
  for (int r = 0; r < G::rows; ++r) {
    if (G::cs == 1) { model().access_gm(pipe, i, &g.at(r, 0), sizeof(E) * G::cols, write); continue; }
    for (int c = 0; c < G::cols; ++c) model().access_gm(pipe, i, &g.at(r, c), sizeof(E), write);
  }
}

template <typename TileT, typename G> void TLOAD(TileT& t, const G& g) {
  model().op = "TLOAD";
  long i = model().issue(PIPE_MTE2);
  if (G::rows != TileT::rows || G::cols != TileT::cols) shape_error("TLOAD");
  gm_rows(PIPE_MTE2, i, g, false);
  write(PIPE_MTE2, i, t);
  for (int r = 0; r < TileT::rows; ++r)
    for (int c = 0; c < TileT::cols; ++c) t.at(r, c) = static_cast<typename TileT::elem>(g.at(r, c));
}

template <typename G, typename TileT> void TSTORE(const G& g, const TileT& t) {
  model().op = "TSTORE";
  int pipe = TileT::type == TileType::Acc ? PIPE_FIX : PIPE_MTE3;
  long i = model().issue(pipe);
  if (G::rows != TileT::rows || G::cols != TileT::cols) shape_error("TSTORE");
  read(pipe, i, t);
  gm_rows(pipe, i, g, true);
  for (int r = 0; r < G::rows; ++r)
    for (int c = 0; c < G::cols; ++c) g.at(r, c) = static_cast<typename G::elem>(t.at(r, c));
}

template <typename D, typename S> void TMOV(D& d, const S& s) {
  model().op = "TMOV";
  int pipe = S::type == TileType::Mat ? PIPE_MTE1 : PIPE_V;
  long i = model().issue(pipe);
  if (D::rows != S::rows || D::cols != S::cols) shape_error("TMOV");
  read(pipe, i, s);
  write(pipe, i, d);
  for (int r = 0; r < D::rows; ++r)
    for (int c = 0; c < D::cols; ++c) d.at(r, c) = static_cast<typename D::elem>(s.at(r, c));
}

template <typename C, typename A, typename B> void matmul(C& c, const A& a, const B& b, bool accumulate) {
  model().op = accumulate ? "TMATMUL_ACC" : "TMATMUL";
  long i = model().issue(PIPE_M);
  if (A::cols != B::rows || C::rows != A::rows || C::cols != B::cols) shape_error("TMATMUL");
  read(PIPE_M, i, a);
  read(PIPE_M, i, b);
  if (accumulate) read(PIPE_M, i, c);
  write(PIPE_M, i, c);
  // k outermost per row: each result still sums its products in k order (the same floats as a dot per entry)
  std::vector<float> bf((size_t)A::cols * C::cols), acc(C::cols);
  for (int k = 0; k < A::cols; ++k)
    for (int n = 0; n < C::cols; ++n) bf[(size_t)k * C::cols + n] = f(b.at(k, n));
  for (int r = 0; r < C::rows; ++r) {
    for (int n = 0; n < C::cols; ++n) acc[n] = accumulate ? f(c.at(r, n)) : 0.0f;
    for (int k = 0; k < A::cols; ++k) {
      const float x = f(a.at(r, k));
      const float* brow = &bf[(size_t)k * C::cols];
      for (int n = 0; n < C::cols; ++n) acc[n] += x * brow[n];
    }
    for (int n = 0; n < C::cols; ++n) c.at(r, n) = acc[n];
  }
}
template <typename C, typename A, typename B> void TMATMUL(C& c, const A& a, const B& b) { matmul(c, a, b, false); }
template <typename C, typename A, typename B> void TMATMUL_ACC(C& c, C& c0, const A& a, const B& b) { (void)c0; matmul(c, a, b, true); }

// vector unit: one helper for every elementwise shape rule
template <typename D, typename Fn> void vec_op(const char* name, D& d, std::initializer_list<std::pair<Space, std::pair<long, size_t>>> srcs, Fn fn) {
  model().op = name;
  long i = model().issue(PIPE_V);
  for (auto& s : srcs) model().access(PIPE_V, i, s.first, s.second.first, s.second.second, false);
  std::vector<typename D::elem> out((size_t)D::rows * D::cols);
  for (int r = 0; r < D::rows; ++r)
    for (int c = 0; c < D::cols; ++c) out[(size_t)r * D::cols + c] = static_cast<typename D::elem>(fn(r, c));
  write(PIPE_V, i, d);
  std::memcpy(d.data(), out.data(), d.bytes());
}
template <typename T> std::pair<Space, std::pair<long, size_t>> src(const T& t) { return {space_of(T::type), {t.addr, t.bytes()}}; }

#define PTO_MODEL_SAME(D, S) if (D::rows != S::rows || D::cols != S::cols) shape_error(__func__)
#define PTO_MODEL_UNARY(NAME, EXPR) \
  template <typename D, typename S> void NAME(D& d, const S& s) { PTO_MODEL_SAME(D, S); \
    vec_op(#NAME, d, {src(s)}, [&](int r, int c) { float x = f(s.at(r, c)); return EXPR; }); }
PTO_MODEL_UNARY(TEXP, std::exp(x))
PTO_MODEL_UNARY(TSQRT, std::sqrt(x))
PTO_MODEL_UNARY(TRSQRT, 1.0f / std::sqrt(x))
PTO_MODEL_UNARY(TRECIP, 1.0f / x)
PTO_MODEL_UNARY(TRELU, x > 0 ? x : 0.0f)
PTO_MODEL_UNARY(TABS, std::fabs(x))
template <typename D, typename S, typename M> void TCVT(D& d, const S& s, M) {
  PTO_MODEL_SAME(D, S);
  vec_op("TCVT", d, {src(s)}, [&](int r, int c) { return s.at(r, c); });  // float -> half rounds to nearest even
}
#define PTO_MODEL_BINARY(NAME, EXPR) \
  template <typename D, typename A, typename B> void NAME(D& d, const A& a, const B& b) { \
    PTO_MODEL_SAME(D, A); PTO_MODEL_SAME(D, B); \
    vec_op(#NAME, d, {src(a), src(b)}, [&](int r, int c) { float x = f(a.at(r, c)), y = f(b.at(r, c)); return EXPR; }); }
PTO_MODEL_BINARY(TADD, x + y)
PTO_MODEL_BINARY(TSUB, x - y)
PTO_MODEL_BINARY(TMUL, x * y)
PTO_MODEL_BINARY(TDIV, x / y)
PTO_MODEL_BINARY(TMAX, std::max(x, y))
PTO_MODEL_BINARY(TMIN, std::min(x, y))
#define PTO_MODEL_ROWEXPAND(NAME, EXPR) \
  template <typename D, typename A, typename B> void NAME(D& d, const A& a, const B& b) { \
    PTO_MODEL_SAME(D, A); if (B::rows != D::rows) shape_error(#NAME); \
    vec_op(#NAME, d, {src(a), src(b)}, [&](int r, int c) { float x = f(a.at(r, c)), y = f(b.at(r, 0)); return EXPR; }); }
PTO_MODEL_ROWEXPAND(TROWEXPANDSUB, x - y)
PTO_MODEL_ROWEXPAND(TROWEXPANDMUL, x * y)
PTO_MODEL_ROWEXPAND(TROWEXPANDDIV, x / y)
template <typename D, typename S, typename V> void TMULS(D& d, const S& s, V v) {
  PTO_MODEL_SAME(D, S); vec_op("TMULS", d, {src(s)}, [&](int r, int c) { return f(s.at(r, c)) * f(v); });
}
template <typename D, typename S, typename V> void TADDS(D& d, const S& s, V v) {
  PTO_MODEL_SAME(D, S); vec_op("TADDS", d, {src(s)}, [&](int r, int c) { return f(s.at(r, c)) + f(v); });
}
template <typename D, typename V> void TEXPANDS(D& d, V v) {
  vec_op("TEXPANDS", d, {}, [&](int, int) { return f(v); });
}
template <typename D, typename S> void TROWEXPAND(D& d, const S& s) {
  if (S::rows != D::rows) shape_error("TROWEXPAND");
  vec_op("TROWEXPAND", d, {src(s)}, [&](int r, int) { return f(s.at(r, 0)); });
}
template <typename D, typename S> void TCOLEXPAND(D& d, const S& s) {
  if (S::cols != D::cols) shape_error("TCOLEXPAND");
  vec_op("TCOLEXPAND", d, {src(s)}, [&](int, int c) { return f(s.at(0, c)); });
}
template <typename D, typename S> void TROWMAX(D& d, const S& s) {
  if (S::rows != D::rows || D::cols != 1) shape_error("TROWMAX");
  vec_op("TROWMAX", d, {src(s)}, [&](int r, int) { float m = f(s.at(r, 0)); for (int c = 1; c < S::cols; ++c) m = std::max(m, f(s.at(r, c))); return m; });
}
template <typename D, typename S> void TROWSUM(D& d, const S& s) {
  if (S::rows != D::rows || D::cols != 1) shape_error("TROWSUM");
  vec_op("TROWSUM", d, {src(s)}, [&](int r, int) { float m = 0.0f; for (int c = 0; c < S::cols; ++c) m += f(s.at(r, c)); return m; });
}
}  // namespace pto

namespace pto_model {
template <typename T> std::vector<T> read_array(const std::string& path, size_t n) {
  std::vector<T> v(n);
  FILE* fp = std::fopen(path.c_str(), "rb");
  if (!fp || std::fread(v.data(), sizeof(T), n, fp) != n) { std::fprintf(stderr, "cannot read %s\n", path.c_str()); std::exit(3); }
  std::fclose(fp);
  return v;
}
template <typename T> void write_array(const std::string& path, const std::vector<T>& v) {
  FILE* fp = std::fopen(path.c_str(), "wb");
  if (!fp || std::fwrite(v.data(), sizeof(T), v.size(), fp) != v.size()) { std::fprintf(stderr, "cannot write %s\n", path.c_str()); std::exit(3); }
  std::fclose(fp);
}
inline void report() {
  Model& m = model();
  std::printf("hazards %ld\nerrors %ld\n", m.hazards, m.errors);
  for (auto& n : m.notes) std::printf("note %s\n", n.c_str());
}
}  // namespace pto_model
