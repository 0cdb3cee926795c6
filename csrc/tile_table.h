// Run-time (rows, columns) -> register-tile instantiation: the one table idiom
// every CPU kernel (int8_mm, weight-only int8_linear, attention) uses.
#pragma once

#include <utility>

#include "common.h"

namespace llmaccel {
inline namespace LLMACCEL_CPU_CAPABILITY {  // see common.h

// fn[R - 1][C - 1] = &Tile<R, C>::run for 1 <= R <= MR rows and 1 <= C <= NC
// columns (vectors or column groups), filled at compile time.  Register tiles
// are fully unrolled templates, so a ragged edge (fewer rows or columns than
// the full tile) needs its own instantiation; drivers pick it with one
// indexed call instead of a switch.
template <int MR, int NC, template <int, int> class Tile>
struct TileTable {
  using Fn = decltype(&Tile<1, 1>::run);
  Fn fn[MR][NC] = {};
  constexpr TileTable() { fill(std::make_integer_sequence<int, MR * NC>{}); }

 private:
  template <int... I>
  constexpr void fill(std::integer_sequence<int, I...>) {
    ((fn[I / NC][I % NC] = &Tile<I / NC + 1, I % NC + 1>::run), ...);
  }
};

}  // namespace LLMACCEL_CPU_CAPABILITY
}  // namespace llmaccel
