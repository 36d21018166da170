//go:build cgo

package kernels

// cuDNN's fused attention (its flash-attention engines), driven through the
// backend graph API. libcudnn.so.9 is loaded with dlopen when a Backend first
// needs it, through the few prototypes below (no cuDNN headers at build time).
// The graphs are the ones cuDNN documents for scaled dot-product attention
// (cudnn-frontend builds the same nodes): the engines match the pattern.
//
//	forward:  S = Q·Kᵀ · scale, causal (row >= col, else -inf), lse = max + log Σ exp,
//	          P = exp(S - max) / Σ, O = P·V
//	backward: softmax_sum = Σ dO∘O (a workspace), P = exp(S - lse),
//	          dV = Pᵀ·dO, dS = P∘(dO·Vᵀ - softmax_sum) · scale, dK = dSᵀ·Q,
//	          dQ = dS·K via a float32 accumulator (a workspace)
//
// with the grouped-query heads broadcast by the matmuls and dK, dV summed over
// the group by reductions. Q, K, V, O and their gradients keep the model's
// [B, T, heads, D] layout (strides), lse is [B, H, T] float32 as everywhere.
// A graph is built and planned once per shape (cuDNN compiles some engines
// at run time: this can take a second) and kept by the device.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void* dn_handle;
typedef void* dn_desc;
typedef int dn_status;

static size_t (*p_dnGetVersion)(void);
static dn_status (*p_dnCreate)(dn_handle*);
static dn_status (*p_dnDestroy)(dn_handle);
static dn_status (*p_dnSetStream)(dn_handle, void*);
static const char* (*p_dnGetErrorString)(dn_status);
static void (*p_dnGetLastErrorString)(char*, size_t);
static dn_status (*p_dnCreateDesc)(int, dn_desc*);
static dn_status (*p_dnDestroyDesc)(dn_desc);
static dn_status (*p_dnFinalize)(dn_desc);
static dn_status (*p_dnSet)(dn_desc, int, int, int64_t, const void*);
static dn_status (*p_dnGet)(dn_desc, int, int, int64_t, int64_t*, void*);
static dn_status (*p_dnExecute)(dn_handle, dn_desc, dn_desc);

// dn_load binds cuDNN from an opened library: NULL or the missing symbol.
static const char* dn_load(void* lib) {
#define DN_SYM(fn, name) if ((*(void**)&fn = dlsym(lib, name)) == NULL) return name;
	DN_SYM(p_dnGetVersion, "cudnnGetVersion")
	DN_SYM(p_dnCreate, "cudnnCreate")
	DN_SYM(p_dnDestroy, "cudnnDestroy")
	DN_SYM(p_dnSetStream, "cudnnSetStream")
	DN_SYM(p_dnGetErrorString, "cudnnGetErrorString")
	DN_SYM(p_dnCreateDesc, "cudnnBackendCreateDescriptor")
	DN_SYM(p_dnDestroyDesc, "cudnnBackendDestroyDescriptor")
	DN_SYM(p_dnFinalize, "cudnnBackendFinalize")
	DN_SYM(p_dnSet, "cudnnBackendSetAttribute")
	DN_SYM(p_dnGet, "cudnnBackendGetAttribute")
	DN_SYM(p_dnExecute, "cudnnBackendExecute")
#undef DN_SYM
	*(void**)&p_dnGetLastErrorString = dlsym(lib, "cudnnGetLastErrorString"); // cuDNN >= 9.0
	return NULL;
}

static long dn_version(void) { return (long)p_dnGetVersion(); }
static dn_status dn_create(dn_handle* h) { return p_dnCreate(h); }
static dn_status dn_destroy(dn_handle h) { return p_dnDestroy(h); }
static dn_status dn_set_stream(dn_handle h, void* s) { return p_dnSetStream(h, s); }
static const char* dn_status_string(dn_status s) { return p_dnGetErrorString(s); }

// The backend API's enums (cudnn_graph.h, cuDNN 9).
enum {
	DT_FLOAT = 0, DT_HALF = 2, DT_INT32 = 4, DT_BF16 = 9, DT_BOOL = 11,
	T_HANDLE = 0, T_DATA_TYPE = 1, T_BOOLEAN = 2, T_INT64 = 3, T_VOID_PTR = 6, T_HEUR_MODE = 8,
	T_POINTWISE_MODE = 14, T_DESC = 15, T_REDUCTION_OP = 18,
	D_POINTWISE = 0, D_ENGINECFG = 3, D_ENGINEHEUR = 4, D_PLAN = 5, D_OP_POINTWISE = 13, D_OPGRAPH = 15,
	D_VARPACK = 16, D_TENSOR = 17, D_MATMUL = 18, D_OP_MATMUL = 19, D_REDUCTION = 21, D_OP_REDUCTION = 22,
	D_OP_RESHAPE = 31,
	PW_ADD = 0, PW_MUL = 1, PW_DIV = 6, PW_SUB = 9, PW_EXP = 13, PW_LOG = 15, PW_IDENTITY = 21,
	PW_CMP_GE = 303, PW_GEN_INDEX = 501, PW_BINARY_SELECT = 601,
	RED_ADD = 0, RED_MAX = 3,
	A_PW_MODE = 0, A_PW_MATH_PREC = 1, A_PW_AXIS = 9,
	A_HEUR_MODE = 200, A_HEUR_GRAPH = 201, A_HEUR_RESULTS = 202,
	A_PLAN_HANDLE = 400, A_PLAN_CONFIG = 401, A_PLAN_WORKSPACE = 402,
	A_OP_PW_DESC = 750, A_OP_PW_X = 751, A_OP_PW_B = 752, A_OP_PW_Y = 753, A_OP_PW_T = 758,
	A_GRAPH_HANDLE = 800, A_GRAPH_OPS = 801,
	A_T_ALIGN = 900, A_T_DTYPE = 901, A_T_DIMS = 902, A_T_STRIDES = 903, A_T_UID = 906, A_T_VIRTUAL = 907,
	A_T_BY_VALUE = 908,
	A_VP_UIDS = 1000, A_VP_PTRS = 1001, A_VP_WORKSPACE = 1003,
	A_MM_COMP = 1500, A_OP_MM_A = 1520, A_OP_MM_B = 1521, A_OP_MM_C = 1522, A_OP_MM_DESC = 1523,
	A_RED_OP = 1600, A_RED_COMP = 1601, A_OP_RED_X = 1610, A_OP_RED_Y = 1611, A_OP_RED_DESC = 1612,
	A_OP_RESHAPE_X = 2200, A_OP_RESHAPE_Y = 2201,
	HEUR_A = 3,
};

// The tensors a graph reads and writes, by unique id; virtual ones count up
// from U_VIRTUAL.
enum {
	U_Q = 1, U_K, U_V, U_O, U_LSE, U_DO, U_DQ, U_DK, U_DV, U_SUM, U_DQACC,
	U_SCALE, U_NEGINF, U_ONE, U_VIRTUAL = 100,
};

#define DN_MAX_DESC 160
#define DN_MAX_OPS 48

// dn_graph is one planned graph and every descriptor it holds; err says what
// failed when plan is NULL.
typedef struct {
	dn_desc desc[DN_MAX_DESC];
	int ndesc;
	dn_desc ops[DN_MAX_OPS];
	int nops;
	int64_t vuid;
	dn_handle h;
	dn_desc plan;
	int64_t workspace;
	int failed;
	char err[768];
} dn_graph;

static void dn_fail(dn_graph* g, const char* what, dn_status s) {
	if (g->failed) return;
	g->failed = 1;
	char last[512] = "";
	if (p_dnGetLastErrorString) p_dnGetLastErrorString(last, sizeof last);
	snprintf(g->err, sizeof g->err, "%s: %s (status %d)%s%s", what, p_dnGetErrorString(s), s, last[0] ? ": " : "", last);
}

static dn_desc dn_new(dn_graph* g, int type, const char* what) {
	if (g->failed) return NULL;
	if (g->ndesc == DN_MAX_DESC) { snprintf(g->err, sizeof g->err, "%s: too many descriptors", what); g->failed = 1; return NULL; }
	dn_desc d = NULL;
	dn_status s = p_dnCreateDesc(type, &d);
	if (s != 0) { dn_fail(g, what, s); return NULL; }
	g->desc[g->ndesc++] = d;
	return d;
}

static void dn_set(dn_graph* g, dn_desc d, int attr, int type, int64_t n, const void* v, const char* what) {
	if (g->failed) return;
	dn_status s = p_dnSet(d, attr, type, n, v);
	if (s != 0) dn_fail(g, what, s);
}

static void dn_fin(dn_graph* g, dn_desc d, const char* what) {
	if (g->failed) return;
	dn_status s = p_dnFinalize(d);
	if (s != 0) dn_fail(g, what, s);
}

static void dn_op(dn_graph* g, dn_desc op, const char* what) {
	dn_fin(g, op, what);
	if (g->failed) return;
	if (g->nops == DN_MAX_OPS) { snprintf(g->err, sizeof g->err, "%s: too many operations", what); g->failed = 1; return; }
	g->ops[g->nops++] = op;
}

// dn_tensor is a 4-d tensor; uid 0 makes a virtual one (an intermediate that
// never reaches memory).
static dn_desc dn_tensor(dn_graph* g, int64_t uid, int64_t dtype, const int64_t* dims, const int64_t* strides, int byval) {
	dn_desc t = dn_new(g, D_TENSOR, "tensor");
	int64_t align = 16;
	int64_t virt = uid == 0;
	if (virt) uid = g->vuid++;
	int64_t bv = byval;
	dn_set(g, t, A_T_DTYPE, T_DATA_TYPE, 1, &dtype, "tensor data type");
	dn_set(g, t, A_T_DIMS, T_INT64, 4, dims, "tensor dims");
	dn_set(g, t, A_T_STRIDES, T_INT64, 4, strides, "tensor strides");
	dn_set(g, t, A_T_UID, T_INT64, 1, &uid, "tensor uid");
	dn_set(g, t, A_T_ALIGN, T_INT64, 1, &align, "tensor alignment");
	dn_set(g, t, A_T_VIRTUAL, T_BOOLEAN, 1, &virt, "tensor virtual");
	if (byval) dn_set(g, t, A_T_BY_VALUE, T_BOOLEAN, 1, &bv, "tensor by value");
	dn_fin(g, t, "tensor");
	return t;
}

#define DIMS(a, b, c, d) ((const int64_t[]){(a), (b), (c), (d)})

// dn_pw is pointwise mode on x (and b, t where the mode takes them) into y,
// computing in prec; axis >= 0 for GEN_INDEX.
static void dn_pw(dn_graph* g, int64_t mode, int64_t prec, int64_t axis, dn_desc x, dn_desc b, dn_desc t, dn_desc y) {
	dn_desc pw = dn_new(g, D_POINTWISE, "pointwise");
	dn_set(g, pw, A_PW_MODE, T_POINTWISE_MODE, 1, &mode, "pointwise mode");
	dn_set(g, pw, A_PW_MATH_PREC, T_DATA_TYPE, 1, &prec, "pointwise precision");
	if (axis >= 0) dn_set(g, pw, A_PW_AXIS, T_INT64, 1, &axis, "pointwise axis");
	dn_fin(g, pw, "pointwise");
	dn_desc op = dn_new(g, D_OP_POINTWISE, "pointwise op");
	dn_set(g, op, A_OP_PW_DESC, T_DESC, 1, &pw, "pointwise op desc");
	dn_set(g, op, A_OP_PW_X, T_DESC, 1, &x, "pointwise x");
	if (b) dn_set(g, op, A_OP_PW_B, T_DESC, 1, &b, "pointwise b");
	if (t) dn_set(g, op, A_OP_PW_T, T_DESC, 1, &t, "pointwise t");
	dn_set(g, op, A_OP_PW_Y, T_DESC, 1, &y, "pointwise y");
	dn_op(g, op, "pointwise op");
}

static void dn_matmul(dn_graph* g, dn_desc a, dn_desc b, dn_desc c) {
	dn_desc mm = dn_new(g, D_MATMUL, "matmul");
	int64_t comp = DT_FLOAT;
	dn_set(g, mm, A_MM_COMP, T_DATA_TYPE, 1, &comp, "matmul compute type");
	dn_fin(g, mm, "matmul");
	dn_desc op = dn_new(g, D_OP_MATMUL, "matmul op");
	dn_set(g, op, A_OP_MM_A, T_DESC, 1, &a, "matmul a");
	dn_set(g, op, A_OP_MM_B, T_DESC, 1, &b, "matmul b");
	dn_set(g, op, A_OP_MM_C, T_DESC, 1, &c, "matmul c");
	dn_set(g, op, A_OP_MM_DESC, T_DESC, 1, &mm, "matmul desc");
	dn_op(g, op, "matmul op");
}

static void dn_reduce(dn_graph* g, int64_t mode, dn_desc x, dn_desc y) {
	dn_desc r = dn_new(g, D_REDUCTION, "reduction");
	int64_t comp = DT_FLOAT;
	dn_set(g, r, A_RED_COMP, T_DATA_TYPE, 1, &comp, "reduction compute type");
	dn_set(g, r, A_RED_OP, T_REDUCTION_OP, 1, &mode, "reduction operator");
	dn_fin(g, r, "reduction");
	dn_desc op = dn_new(g, D_OP_REDUCTION, "reduction op");
	dn_set(g, op, A_OP_RED_DESC, T_DESC, 1, &r, "reduction op desc");
	dn_set(g, op, A_OP_RED_X, T_DESC, 1, &x, "reduction x");
	dn_set(g, op, A_OP_RED_Y, T_DESC, 1, &y, "reduction y");
	dn_op(g, op, "reduction op");
}

static void dn_reshape(dn_graph* g, dn_desc x, dn_desc y) {
	dn_desc op = dn_new(g, D_OP_RESHAPE, "reshape op");
	dn_set(g, op, A_OP_RESHAPE_X, T_DESC, 1, &x, "reshape x");
	dn_set(g, op, A_OP_RESHAPE_Y, T_DESC, 1, &y, "reshape y");
	dn_op(g, op, "reshape op");
}

// dn_causal masks the scores s [B, H, T, T]: row >= col keeps, else -inf.
static dn_desc dn_causal(dn_graph* g, dn_desc s, dn_desc neginf, const int64_t* sd, const int64_t* ss) {
	dn_desc row = dn_tensor(g, 0, DT_INT32, sd, ss, 0);
	dn_desc col = dn_tensor(g, 0, DT_INT32, sd, ss, 0);
	dn_desc keep = dn_tensor(g, 0, DT_BOOL, sd, ss, 0);
	dn_desc out = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_pw(g, PW_GEN_INDEX, DT_FLOAT, 2, s, NULL, NULL, row);
	dn_pw(g, PW_GEN_INDEX, DT_FLOAT, 3, s, NULL, NULL, col);
	dn_pw(g, PW_CMP_GE, DT_BOOL, -1, row, col, NULL, keep);
	dn_pw(g, PW_BINARY_SELECT, DT_FLOAT, -1, s, neginf, keep, out);
	return out;
}

// dn_plan builds the operation graph and finalizes the first engine
// configuration heuristic mode A offers that works.
static void dn_plan(dn_graph* g) {
	dn_desc og = dn_new(g, D_OPGRAPH, "operation graph");
	dn_set(g, og, A_GRAPH_OPS, T_DESC, g->nops, g->ops, "graph ops");
	dn_set(g, og, A_GRAPH_HANDLE, T_HANDLE, 1, &g->h, "graph handle");
	dn_fin(g, og, "operation graph");
	dn_desc heur = dn_new(g, D_ENGINEHEUR, "heuristics");
	int64_t mode = HEUR_A;
	dn_set(g, heur, A_HEUR_GRAPH, T_DESC, 1, &og, "heuristics graph");
	dn_set(g, heur, A_HEUR_MODE, T_HEUR_MODE, 1, &mode, "heuristics mode");
	dn_fin(g, heur, "heuristics (no engine for this graph)");
	if (g->failed) return;
	enum { MAXCFG = 8 };
	dn_desc cfg[MAXCFG];
	for (int i = 0; i < MAXCFG; i++) cfg[i] = dn_new(g, D_ENGINECFG, "engine config");
	if (g->failed) return;
	int64_t n = 0;
	dn_status s = p_dnGet(heur, A_HEUR_RESULTS, T_DESC, MAXCFG, &n, cfg);
	if (s != 0) { dn_fail(g, "heuristics results", s); return; }
	if (n == 0) { snprintf(g->err, sizeof g->err, "heuristics: no engine configuration for this graph"); g->failed = 1; return; }
	dn_status last = 0;
	for (int64_t i = 0; i < n && i < MAXCFG; i++) {
		dn_desc plan = dn_new(g, D_PLAN, "execution plan");
		if (g->failed) return;
		dn_set(g, plan, A_PLAN_HANDLE, T_HANDLE, 1, &g->h, "plan handle");
		dn_set(g, plan, A_PLAN_CONFIG, T_DESC, 1, &cfg[i], "plan engine config");
		if (g->failed) return;
		last = p_dnFinalize(plan);
		if (last == 0) {
			int64_t got = 0;
			s = p_dnGet(plan, A_PLAN_WORKSPACE, T_INT64, 1, &got, &g->workspace);
			if (s != 0) { dn_fail(g, "plan workspace size", s); return; }
			g->plan = plan;
			return;
		}
	}
	dn_fail(g, "execution plan (no engine configuration finalized)", last);
}

static dn_graph* dn_graph_new(dn_handle h) {
	dn_graph* g = calloc(1, sizeof(dn_graph));
	if (g) { g->h = h; g->vuid = U_VIRTUAL; }
	return g;
}

static void dn_graph_free(dn_graph* g) {
	if (!g) return;
	for (int i = g->ndesc - 1; i >= 0; i--) if (g->desc[i]) p_dnDestroyDesc(g->desc[i]);
	free(g);
}

// dn_layout returns the dims and strides of a [B, T, heads, D] tensor seen as
// [B, heads, T, D] (trans: [B, heads, D, T]).
static void dn_layout(int64_t B, int64_t T, int64_t Hx, int64_t D, int trans, int64_t* dims, int64_t* str) {
	dims[0] = B; dims[1] = Hx; str[0] = T * Hx * D; str[1] = D;
	if (trans) { dims[2] = D; dims[3] = T; str[2] = 1; str[3] = Hx * D; }
	else { dims[2] = T; dims[3] = D; str[2] = Hx * D; str[3] = 1; }
}

// dn_build_forward plans the forward graph (see the file's comment).
static dn_graph* dn_build_forward(dn_handle h, int64_t dt, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
	dn_graph* g = dn_graph_new(h);
	if (!g) return NULL;
	int64_t qd[4], qs[4], ktd[4], kts[4], vd[4], vs[4];
	dn_layout(B, T, H, D, 0, qd, qs);
	dn_layout(B, T, KVH, D, 1, ktd, kts);
	dn_layout(B, T, KVH, D, 0, vd, vs);
	const int64_t* one = DIMS(1, 1, 1, 1);
	const int64_t* sd = DIMS(B, H, T, T); const int64_t* ss = DIMS(H * T * T, T * T, T, 1);
	const int64_t* rd = DIMS(B, H, T, 1); const int64_t* rs = DIMS(H * T, T, 1, 1);
	dn_desc q = dn_tensor(g, U_Q, dt, qd, qs, 0), kt = dn_tensor(g, U_K, dt, ktd, kts, 0);
	dn_desc v = dn_tensor(g, U_V, dt, vd, vs, 0), o = dn_tensor(g, U_O, dt, qd, qs, 0);
	dn_desc lse = dn_tensor(g, U_LSE, DT_FLOAT, rd, rs, 0);
	dn_desc scale = dn_tensor(g, U_SCALE, DT_FLOAT, one, one, 1), neginf = dn_tensor(g, U_NEGINF, DT_FLOAT, one, one, 1);
	dn_desc s = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), s2 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_matmul(g, q, kt, s);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, s, scale, NULL, s2);
	dn_desc s3 = dn_causal(g, s2, neginf, sd, ss);
	dn_desc mx = dn_tensor(g, 0, DT_FLOAT, rd, rs, 0), s4 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_desc e = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), z = dn_tensor(g, 0, DT_FLOAT, rd, rs, 0);
	dn_desc lz = dn_tensor(g, 0, DT_FLOAT, rd, rs, 0), p = dn_tensor(g, 0, dt, sd, ss, 0);
	dn_reduce(g, RED_MAX, s3, mx);
	dn_pw(g, PW_SUB, DT_FLOAT, -1, s3, mx, NULL, s4);
	dn_pw(g, PW_EXP, DT_FLOAT, -1, s4, NULL, NULL, e);
	dn_reduce(g, RED_ADD, e, z);
	dn_pw(g, PW_LOG, DT_FLOAT, -1, z, NULL, NULL, lz);
	dn_pw(g, PW_ADD, DT_FLOAT, -1, mx, lz, NULL, lse);
	dn_pw(g, PW_DIV, DT_FLOAT, -1, e, z, NULL, p);
	dn_matmul(g, p, v, o);
	dn_plan(g);
	return g;
}

// dn_build_backward plans the backward graph (see the file's comment).
static dn_graph* dn_build_backward(dn_handle h, int64_t dt, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D) {
	dn_graph* g = dn_graph_new(h);
	if (!g) return NULL;
	int64_t qd[4], qs[4], ktd[4], kts[4], kd[4], ks[4];
	dn_layout(B, T, H, D, 0, qd, qs);
	dn_layout(B, T, KVH, D, 1, ktd, kts);
	dn_layout(B, T, KVH, D, 0, kd, ks);
	const int64_t* one = DIMS(1, 1, 1, 1);
	const int64_t* sd = DIMS(B, H, T, T); const int64_t* ss = DIMS(H * T * T, T * T, T, 1);
	const int64_t* st = DIMS(H * T * T, T * T, 1, T); // [B, H, T, T] transposed
	const int64_t* rd = DIMS(B, H, T, 1); const int64_t* rs = DIMS(H * T, T, 1, 1);
	const int64_t* fs = DIMS(H * T * D, T * D, D, 1); // [B, H, T, D] packed
	dn_desc q = dn_tensor(g, U_Q, dt, qd, qs, 0), kt = dn_tensor(g, U_K, dt, ktd, kts, 0);
	dn_desc vt = dn_tensor(g, U_V, dt, ktd, kts, 0), o = dn_tensor(g, U_O, dt, qd, qs, 0);
	dn_desc dout = dn_tensor(g, U_DO, dt, qd, qs, 0), dq = dn_tensor(g, U_DQ, dt, qd, qs, 0);
	dn_desc dk = dn_tensor(g, U_DK, dt, kd, ks, 0), dv = dn_tensor(g, U_DV, dt, kd, ks, 0);
	dn_desc lse = dn_tensor(g, U_LSE, DT_FLOAT, rd, rs, 0), sum = dn_tensor(g, U_SUM, DT_FLOAT, rd, rs, 0);
	dn_desc dqacc = dn_tensor(g, U_DQACC, DT_FLOAT, DIMS(B, H, T, D), fs, 0);
	dn_desc scale = dn_tensor(g, U_SCALE, DT_FLOAT, one, one, 1), neginf = dn_tensor(g, U_NEGINF, DT_FLOAT, one, one, 1);
	dn_desc unit = dn_tensor(g, U_ONE, DT_FLOAT, one, one, 1);
	// softmax_sum = Σ_d dO∘O
	dn_desc t1 = dn_tensor(g, 0, DT_FLOAT, qd, qs, 0), t2 = dn_tensor(g, 0, DT_FLOAT, rd, rs, 0);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, dout, o, NULL, t1);
	dn_reduce(g, RED_ADD, t1, t2);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, t2, unit, NULL, sum);
	// P = exp(scale·Q·Kᵀ (causal) - lse)
	dn_desc s = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), s2 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_matmul(g, q, kt, s);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, s, scale, NULL, s2);
	dn_desc s3 = dn_causal(g, s2, neginf, sd, ss);
	dn_desc s4 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), p = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_pw(g, PW_SUB, DT_FLOAT, -1, s3, lse, NULL, s4);
	dn_pw(g, PW_EXP, DT_FLOAT, -1, s4, NULL, NULL, p);
	// dV = Pᵀ·dO (summed over the query heads of a group)
	dn_desc pt = dn_tensor(g, 0, dt, DIMS(B, H, T, T), st, 0);
	dn_reshape(g, p, pt);
	if (H == KVH) {
		dn_matmul(g, pt, dout, dv);
	} else {
		dn_desc dvf = dn_tensor(g, 0, dt, DIMS(B, H, T, D), fs, 0);
		dn_matmul(g, pt, dout, dvf);
		dn_reduce(g, RED_ADD, dvf, dv);
	}
	// dS = P∘(dO·Vᵀ - softmax_sum)·scale
	dn_desc dp = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), u1 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_desc u2 = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0), ds = dn_tensor(g, 0, DT_FLOAT, sd, ss, 0);
	dn_matmul(g, dout, vt, dp);
	dn_pw(g, PW_SUB, DT_FLOAT, -1, dp, sum, NULL, u1);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, u1, p, NULL, u2);
	dn_pw(g, PW_MUL, DT_FLOAT, -1, u2, scale, NULL, ds);
	// dK = dSᵀ·Q
	dn_desc dst = dn_tensor(g, 0, dt, DIMS(B, H, T, T), st, 0);
	dn_reshape(g, ds, dst);
	if (H == KVH) {
		dn_matmul(g, dst, q, dk);
	} else {
		dn_desc dkf = dn_tensor(g, 0, dt, DIMS(B, H, T, D), fs, 0);
		dn_matmul(g, dst, q, dkf);
		dn_reduce(g, RED_ADD, dkf, dk);
	}
	// dQ = dS·K through the float32 accumulator
	dn_desc k = dn_tensor(g, 0, dt, kd, ks, 0);
	dn_reshape(g, kt, k);
	dn_matmul(g, ds, k, dqacc);
	dn_pw(g, PW_IDENTITY, DT_FLOAT, -1, dqacc, NULL, NULL, dq);
	dn_plan(g);
	return g;
}

static const char* dn_graph_err(dn_graph* g) { return g->failed ? g->err : NULL; }
static int64_t dn_graph_workspace(dn_graph* g) { return g->workspace; }

// dn_execute runs g's plan on the device pointers ptr[i] of uid[i] (n of
// them), with the scalars passed by value (the 1 of U_ONE with with_one: the
// backward) and workspace ws; 0 or a status, with err filled.
static dn_status dn_execute(dn_graph* g, int n, const int64_t* uid, const uint64_t* ptr, uint64_t ws, float scale,
                            int with_one, char* err, size_t errlen) {
	float neginf = -__builtin_inff(), one = 1;
	int64_t uids[16];
	void* ptrs[16];
	if (n > 13) return 3; // CUDNN_STATUS_BAD_PARAM
	for (int i = 0; i < n; i++) { uids[i] = uid[i]; ptrs[i] = (void*)(uintptr_t)ptr[i]; }
	uids[n] = U_SCALE; ptrs[n++] = &scale;
	uids[n] = U_NEGINF; ptrs[n++] = &neginf;
	if (with_one) { uids[n] = U_ONE; ptrs[n++] = &one; }
	dn_desc vp = NULL;
	dn_status s = p_dnCreateDesc(D_VARPACK, &vp);
	const char* what = "variant pack";
	void* wsp = (void*)(uintptr_t)ws;
	if (s == 0) s = p_dnSet(vp, A_VP_UIDS, T_INT64, n, uids);
	if (s == 0) s = p_dnSet(vp, A_VP_PTRS, T_VOID_PTR, n, ptrs);
	if (s == 0) s = p_dnSet(vp, A_VP_WORKSPACE, T_VOID_PTR, 1, &wsp);
	if (s == 0) s = p_dnFinalize(vp);
	if (s == 0) { what = "cudnnBackendExecute"; s = p_dnExecute(g->h, g->plan, vp); }
	if (s != 0) {
		char last[512] = "";
		if (p_dnGetLastErrorString) p_dnGetLastErrorString(last, sizeof last);
		snprintf(err, errlen, "%s: %s (status %d)%s%s", what, p_dnGetErrorString(s), s, last[0] ? ": " : "", last);
	}
	if (vp) p_dnDestroyDesc(vp);
	return s;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"unsafe"

	"train/ops"
)

// cuDNN's library, loaded once per process (like cuBLAS in cuda.go).
var (
	dnnOnce   sync.Once
	dnnLoaded struct {
		path    string
		version int // e.g. 91400
		err     error
	}
)

func loadCudnn() {
	var tried []string
	for _, lib := range cudnnCandidates(os.Getenv, "") {
		h, err := openLib(lib, false)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		if miss := C.dn_load(h); miss != nil {
			tried = append(tried, fmt.Sprintf("%s: symbol %s missing", lib, C.GoString(miss)))
			continue
		}
		dnnLoaded.path = lib
		dnnLoaded.version = int(C.dn_version())
		if dnnLoaded.version < minCudnn {
			dnnLoaded.err = fmt.Errorf("%s is cuDNN %s; its fused attention needs %s or later", lib,
				cudnnVersionString(dnnLoaded.version), cudnnVersionString(minCudnn))
		}
		return
	}
	dnnLoaded.err = fmt.Errorf("libcudnn.so.9 not found (set TRAIN_CUDNN to its path): %v", tried)
}

// minCudnn is the oldest cuDNN whose fused attention engines take the
// graphs built here (-inf masking from 9.0, the dQ accumulator set up by
// cuDNN itself from 9.6).
const minCudnn = 90600

// dnnKey names one planned graph.
type dnnKey struct {
	backward        bool
	dt              ops.DType
	B, T, H, KVH, D int
}

// dnnState is a device's cuDNN handle and planned graphs (the maxGraphs
// used last); graphs that could not be planned keep why.
type dnnState struct {
	handle C.dn_handle
	graphs *lru[dnnKey, *C.dn_graph]
	failed map[dnnKey]string
}

// maxGraphs bounds the planned graphs a device keeps: training uses two (a
// forward and a backward), evaluation one per batch shape.
const maxGraphs = 32

// cudnn returns the device's cuDNN state, opening it on first use.
func (d *device) cudnn() (*dnnState, error) {
	if d.dnn != nil {
		return d.dnn, nil
	}
	dnnOnce.Do(loadCudnn)
	if dnnLoaded.err != nil {
		return nil, dnnLoaded.err
	}
	s := &dnnState{graphs: newLRU[dnnKey, *C.dn_graph](maxGraphs), failed: map[dnnKey]string{}}
	if st := C.dn_create(&s.handle); st != 0 {
		return nil, fmt.Errorf("cudnnCreate: %s (status %d)", C.GoString(C.dn_status_string(st)), int(st))
	}
	if st := C.dn_set_stream(s.handle, unsafe.Pointer(d.stream)); st != 0 {
		C.dn_destroy(s.handle)
		return nil, fmt.Errorf("cudnnSetStream: %s (status %d)", C.GoString(C.dn_status_string(st)), int(st))
	}
	d.dnn = s
	return s, nil
}

// closeCudnn frees the graphs and the handle.
func (d *device) closeCudnn() error {
	if d.dnn == nil {
		return nil
	}
	for _, g := range d.dnn.graphs.All() {
		C.dn_graph_free(g)
	}
	st := C.dn_destroy(d.dnn.handle)
	d.dnn = nil
	if st != 0 {
		return fmt.Errorf("cudnnDestroy: status %d", int(st))
	}
	return nil
}

// dnnGraph returns the planned graph of k and its workspace in bytes, or
// why cuDNN cannot run it.
func (d *device) dnnGraph(k dnnKey) (*C.dn_graph, int64, error) {
	s, err := d.cudnn()
	if err != nil {
		return nil, 0, err
	}
	if g, ok := s.graphs.Get(k); ok {
		return g, int64(C.dn_graph_workspace(g)), nil
	}
	if why := s.failed[k]; why != "" {
		return nil, 0, errors.New(why)
	}
	dt := C.int64_t(C.DT_BF16)
	if k.dt == ops.F16 {
		dt = C.DT_HALF
	}
	B, T, H, KVH, D := C.int64_t(k.B), C.int64_t(k.T), C.int64_t(k.H), C.int64_t(k.KVH), C.int64_t(k.D)
	var g *C.dn_graph
	if k.backward {
		g = C.dn_build_backward(s.handle, dt, B, T, H, KVH, D)
	} else {
		g = C.dn_build_forward(s.handle, dt, B, T, H, KVH, D)
	}
	if g == nil {
		return nil, 0, errors.New("cuDNN graph: out of host memory")
	}
	if e := C.dn_graph_err(g); e != nil {
		why := C.GoString(e)
		C.dn_graph_free(g)
		s.failed[k] = why
		return nil, 0, errors.New(why)
	}
	if old, ok := s.graphs.Put(k, g); ok {
		if err := d.sync(); err != nil { // no queued execution may still use it
			return nil, 0, err
		}
		C.dn_graph_free(old)
	}
	return g, int64(C.dn_graph_workspace(g)), nil
}

// dnnRun executes g on the tensors by uid.
func (d *device) dnnRun(g *C.dn_graph, tensors map[int]uint64, ws uint64, scale float32, backward bool) error {
	uids := make([]C.int64_t, 0, len(tensors))
	ptrs := make([]C.uint64_t, 0, len(tensors))
	for u, p := range tensors {
		uids = append(uids, C.int64_t(u))
		ptrs = append(ptrs, C.uint64_t(p))
	}
	var msg [1024]C.char
	if st := C.dn_execute(g, C.int(len(uids)), &uids[0], &ptrs[0], C.uint64_t(ws), C.float(scale), C.int(b2i(backward)), &msg[0], C.size_t(len(msg))); st != 0 {
		return errors.New(C.GoString(&msg[0]))
	}
	return nil
}

// cudnnVersion is the loaded cuDNN's version (0 when none loads) and where
// it came from, or why none loads.
func cudnnVersion() (int, string, error) {
	dnnOnce.Do(loadCudnn)
	return dnnLoaded.version, dnnLoaded.path, dnnLoaded.err
}

// dnnUIDs are the graphs' tensor ids, as the C enum numbers them.
const (
	dnnQ     = int(C.U_Q)
	dnnK     = int(C.U_K)
	dnnV     = int(C.U_V)
	dnnO     = int(C.U_O)
	dnnLSE   = int(C.U_LSE)
	dnnDO    = int(C.U_DO)
	dnnDQ    = int(C.U_DQ)
	dnnDK    = int(C.U_DK)
	dnnDV    = int(C.U_DV)
	dnnSum   = int(C.U_SUM)
	dnnDQAcc = int(C.U_DQACC)
)

// dnnAttention runs the forward or the backward through cuDNN; false when
// cuDNN cannot take it (with TRAIN_ATTENTION=cudnn that is an error instead),
// leaving the call to the flash kernels. Why it cannot is kept per shape by
// the device (dnnGraph); AttentionKernel reports it at start-up for a small
// problem with the model's heads.
func (b *Backend) dnnAttention(op string, p attnPtrs, backward bool, dt ops.DType, B, T, H, KVH, D int) bool {
	k := dnnKey{backward: backward, dt: dt, B: B, T: T, H: H, KVH: KVH, D: D}
	var g *C.dn_graph
	var ws int64
	var why error
	if err := b.call(func(d *device) error { g, ws, why = d.dnnGraph(k); return nil }); err != nil {
		b.fail("%s: %w", op, err)
		return true
	}
	if why != nil {
		if b.attnPick == "cudnn" {
			b.fail("%s: cuDNN attention (%s=cudnn): %w", op, AttentionEnv, why)
			return true
		}
		return false
	}
	plan := alignBytes(max(ws, 1)) // never a null workspace
	need := plan
	sum, acc := cudnnGraphBuffers(B, T, H, D)
	if backward {
		need += sum + acc
	}
	base := b.grow(op, &b.attnWS, &b.attnWSB, need)
	if b.err != nil {
		return true
	}
	t := map[int]uint64{dnnQ: p.q, dnnK: p.k, dnnV: p.v, dnnO: p.out, dnnLSE: p.lse}
	if backward {
		t[dnnDO], t[dnnDQ], t[dnnDK], t[dnnDV] = p.dout, p.dq, p.dk, p.dv
		t[dnnSum], t[dnnDQAcc] = base+uint64(plan), base+uint64(plan+sum)
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	b.run(op, func(d *device) error { return d.dnnRun(g, t, base, scale, backward) })
	return true
}

// dnnCheck plans the forward and backward graphs of a small problem with
// these heads: "" when cuDNN takes them, else why not.
func (b *Backend) dnnCheck(dt ops.DType, H, KVH, D int) string {
	var why error
	err := b.call(func(d *device) error {
		for _, bwd := range []bool{false, true} {
			if _, _, why = d.dnnGraph(dnnKey{backward: bwd, dt: dt, B: 1, T: 128, H: H, KVH: KVH, D: D}); why != nil {
				return nil
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return err.Error()
	case why != nil:
		return why.Error()
	}
	return ""
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
