//! The global allocator: mimalloc, called the way std's `System` allocator
//! calls `malloc`.
//!
//! A proxy allocates small, short-lived objects on every request;
//! mimalloc's thread-local free lists make those markedly cheaper than glibc
//! malloc. The `mimalloc` crate's allocator passes every request to
//! `mi_malloc_aligned`, whose fast path only covers blocks up to 1 KiB: a
//! boxed request future or a read buffer took mimalloc's generic aligned
//! path (about 1,000 instructions, callgrind) on every request. `mi_malloc`
//! already guarantees 16-byte alignment, so only stricter alignments need
//! the aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// Alignment `mi_malloc` guarantees on the 64-bit targets we build for.
const MIN_ALIGN: usize = 16;

/// mimalloc as a global allocator (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct MiMalloc;

/// Whether a block of `size` bytes at `align` can come from the plain
/// (unaligned) entry points.
fn plain(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc with at least `layout.align()`
// alignment (mi_malloc guarantees MIN_ALIGN; stricter alignments use the
// aligned calls) and is freed by mi_free, which accepts blocks from any of
// them.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for_and_survive_realloc() {
        let a = MiMalloc;
        for (size, align) in [
            (1, 1),
            (24, 8),
            (2048, 16),
            (100, 64),
            (8192, 4096),
            (8, 16),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                p.write_bytes(0xab, size);
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                assert!((0..size).all(|i| *q.add(i) == 0xab));
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert!((0..size).all(|i| *z.add(i) == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
