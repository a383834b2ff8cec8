// Device-side lookup shared by the KV-cache kernels (store_kv_kernel.cuh,
// paged_attention_kernel.cuh): which sequence of a ragged step a block works on.
//
// The host knows only the number of sequences and the total row count (the per-sequence token
// counts live in device memory, paged_attention.cuh), so those kernels launch an upper bound of
// blocks along x, number each sequence's tiles of `rows_per_tile` tokens consecutively in array
// order, and let each block find its own (sequence, first token) with one warp-wide scan over
// the sequence array. Blocks past the last tile find nothing and exit.
#pragma once

#include <cstdint>

#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/paged_attention.cuh"

namespace spqr::kernels {

struct SeqTile {
  int32_t seq = -1;   // index into the sequence array, -1 when `tile` is past the last tile
  int32_t first = 0;  // first token of the tile within the sequence's chunk
};

// Tile `tile` of the numbering above. Called by all 32 lanes of a warp (it shuffles with a full
// mask); every lane gets the same answer. A sequence with num_tokens <= 0 has no tiles.
// Cost: ceil(num_seqs / 32) rounds of one load, a 5-step scan and a ballot.
__device__ __forceinline__ SeqTile FindSeqTile(const AttentionSeqDevice* seqs, int32_t num_seqs,
                                               int32_t rows_per_tile, int64_t tile) {
  constexpr unsigned kFull = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x % 32);
  long long before = 0;  // tiles of the sequences of earlier rounds
  for (int32_t base = 0; base < num_seqs; base += 32) {
    const int32_t s = base + lane;
    const int32_t n = s < num_seqs ? seqs[s].num_tokens : 0;
    const long long tiles =
        n > 0 ? (static_cast<long long>(n) + rows_per_tile - 1) / rows_per_tile : 0;
    long long inclusive = tiles;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const long long up = __shfl_up_sync(kFull, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    const long long first_tile = before + inclusive - tiles;  // this lane's sequence's first tile
    const unsigned hit = __ballot_sync(kFull, tile >= first_tile && tile < first_tile + tiles);
    if (hit != 0) {
      const int src = __ffs(static_cast<int>(hit)) - 1;
      const long long local = __shfl_sync(kFull, tile - first_tile, src);
      return SeqTile{base + src, static_cast<int32_t>(local * rows_per_tile)};
    }
    before += __shfl_sync(kFull, inclusive, 31);
  }
  return SeqTile{};
}

}  // namespace spqr::kernels
