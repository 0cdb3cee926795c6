// Packed int8 weights: the layout record every reader checks before use.
#pragma once

#include <cstdint>

#include "int8_mm.h"
#include "variants.h"

namespace llmaccel {

// Bytes of the panels alone (the column sums follow them).
int64_t packed_panel_bytes(const Int8MMLayout& L, int64_t N, int64_t K);

// Writes the panels of W [N, K] (row n at w + n * ldw) in layout L: groups
// of L.nr columns, each one contiguous run in which the L.kalign-byte chunks
// of its columns alternate, zero padded in both N and K (packed_panel_bytes
// bytes).  int8_mm_pack_b's body, and the per-call packing of kernels that
// need panels when handed a plain weight.
void pack_panels(const Int8MMLayout& L, int64_t N, int64_t K, const int8_t* w, int64_t ldw, int8_t* out,
                 int nthreads);

// The panels and column sums of a buffer written by int8_mm_pack_b, after
// checking its header names variant v's layout and this N, K (else a clear
// error naming `op`: a buffer packed for another variant or shape is never
// read).
struct PackedPanels {
  const int8_t* panels = nullptr;
  const int32_t* colsum = nullptr;
};
PackedPanels open_packed(const char* op, const int8_t* w_packed, const Variant& v, int64_t N, int64_t K);

}  // namespace llmaccel
