//! Memory regions: anonymous mappings of reserved huge, transparent huge or
//! normal pages, bound to a NUMA node and faulted in when made, and the
//! disjoint spans their owners get. What the host offers and the NUMA
//! calls themselves are `memory`'s.

use std::io;
use std::ptr::NonNull;

use crate::memory;

/// The pages a Region is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Reserved 2 MiB huge pages (hugetlb, `vm.nr_hugepages`).
    HugeTlb,
    /// Normal pages advised to be transparent huge pages (MADV_HUGEPAGE):
    /// the kernel backs them with 2 MiB pages where it finds them.
    Transparent,
    /// 4 KiB pages: transparent huge pages refused (MADV_NOHUGEPAGE) or
    /// disabled on the host.
    Normal,
}

impl PageKind {
    pub fn name(self) -> &'static str {
        match self {
            PageKind::HugeTlb => "hugetlb",
            PageKind::Transparent => "thp",
            PageKind::Normal => "normal",
        }
    }
}

/// An anonymous, private memory mapping, released on drop.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    pages: PageKind,
}

// SAFETY: the region is plain memory; who may touch which bytes is decided by
// its users (each shard owns a disjoint part).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

/// The size of a huge page, reserved or transparent.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
const PAGE_BYTES: usize = 4096;

/// Huge pages a region of `len` bytes takes when `Region::map` gets them.
pub fn huge_pages_for(len: usize) -> usize {
    len.div_ceil(HUGE_PAGE_BYTES)
}

impl Region {
    /// Maps `len` bytes of `pages`, bound to NUMA node `node` (preferred,
    /// so a node short of memory lends from another rather than failing)
    /// before any page is touched, then zeroes and faults every page in, so
    /// the appliance never takes a page fault on the event path.
    /// `HugeTlb` fails with ENOMEM when too few 2 MiB pages are reserved;
    /// `Transparent` comes back as `Normal` when the host disabled them.
    pub fn map(len: usize, pages: PageKind, node: Option<usize>) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty region",
            ));
        }
        let mut region = match pages {
            PageKind::HugeTlb => Region::map_huge_tlb(len)?,
            PageKind::Transparent | PageKind::Normal => Region::map_aligned(len)?,
        };
        if let Some(node) = node {
            // SAFETY: the range is this region's mapping, not yet touched.
            unsafe { memory::prefer_node(region.as_ptr(), region.len, node)? };
        }
        let start = region.as_ptr() as *mut libc::c_void;
        // SAFETY: advice and population act on this region's own mapping;
        // advice is best effort.
        unsafe {
            match pages {
                PageKind::Transparent => libc::madvise(start, region.len, libc::MADV_HUGEPAGE),
                PageKind::Normal => libc::madvise(start, region.len, libc::MADV_NOHUGEPAGE),
                PageKind::HugeTlb => 0,
            };
            if libc::madvise(start, region.len, libc::MADV_POPULATE_WRITE) != 0 {
                // Before Linux 5.14: touch every page by hand.
                for page in (0..region.len).step_by(PAGE_BYTES) {
                    std::ptr::write_volatile(region.as_ptr().add(page), 0);
                }
            }
        }
        region.pages = match pages {
            PageKind::Transparent if !memory::transparent_huge_pages_enabled() => PageKind::Normal,
            pages => pages,
        };
        Ok(region)
    }

    /// Reserved 2 MiB pages, `len` rounded up to whole pages. The kernel
    /// promises the pages at mmap, so faulting them in later cannot fail.
    fn map_huge_tlb(len: usize) -> io::Result<Region> {
        let len = huge_pages_for(len) * HUGE_PAGE_BYTES;
        let ptr = mmap_anonymous(
            len,
            libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            "reserved 2 MiB pages",
        )?;
        Ok(Region {
            ptr,
            len,
            pages: PageKind::HugeTlb,
        })
    }

    /// Normal pages in a 2 MiB-aligned window (transparent huge pages need
    /// the alignment), `len` rounded up to whole 4 KiB pages: maps 2 MiB more
    /// than asked and gives back the ends.
    fn map_aligned(len: usize) -> io::Result<Region> {
        let len = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let padded = len + HUGE_PAGE_BYTES;
        let raw = mmap_anonymous(padded, 0, "normal pages")?.as_ptr() as usize;
        let start = raw.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
        let head = start - raw;
        let tail = padded - head - len;
        // SAFETY: head and tail are the unused ends of the mapping just made;
        // [start, start + len) stays mapped.
        unsafe {
            if head > 0 {
                libc::munmap(raw as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Region {
            ptr: NonNull::new(start as *mut u8).expect("inside a mapping"),
            len,
            pages: PageKind::Normal,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> PageKind {
        self.pages
    }

    /// The NUMA node of the first page of every 2 MiB of the region (at
    /// most 512 samples), as the kernel reports them (move_pages).
    pub fn page_nodes(&self) -> io::Result<Vec<usize>> {
        let stride = self.len.div_ceil(512).next_multiple_of(HUGE_PAGE_BYTES);
        // SAFETY: every sampled address lies inside this mapping.
        unsafe { memory::page_nodes(self.as_ptr(), self.len, stride) }
    }

    /// Cuts the region into consecutive spans of the given lengths, each
    /// starting on a 4 KiB page, one per owner. The spans borrow nothing:
    /// the caller keeps the Region alive (and mapped) for as long as any
    /// span is used.
    pub fn split(&self, lens: &[usize]) -> Vec<Span> {
        let mut offset = 0;
        lens.iter()
            .map(|&len| {
                assert!(
                    len > 0 && offset + len <= self.len,
                    "region of {} bytes is too small for spans of {lens:?} bytes",
                    self.len
                );
                // SAFETY: offset + len <= self.len, inside the mapping.
                let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) };
                offset = (offset + len).next_multiple_of(PAGE_BYTES);
                Span { ptr, len }
            })
            .collect()
    }

    /// Cuts the region into `count` equal, page-aligned spans.
    pub fn spans(&self, count: usize) -> Vec<Span> {
        let each = self.len / count / PAGE_BYTES * PAGE_BYTES;
        self.split(&vec![each; count])
    }
}

/// A fresh private anonymous mapping of `len` bytes, read and write, of
/// the pages `what` names.
fn mmap_anonymous(len: usize, flags: libc::c_int, what: &str) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("mmap of {len} bytes of {what}: {err}"),
        ));
    }
    Ok(NonNull::new(ptr as *mut u8).expect("mmap returned null"))
}

/// A disjoint part of a Region, owned by one thread. Reading and writing go
/// through bounds-checked methods; `ptr` hands the kernel an address.
pub struct Span {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: spans of one region never overlap; each is used by one owner.
unsafe impl Send for Span {}

impl Span {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        // SAFETY: bounds checked above; the memory is mapped while the span is used.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        // SAFETY: as above, and &mut self rules out other borrows of the span.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }

    /// The span as one iovec, for registering it with io_uring.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr() as *mut libc::c_void,
            iov_len: self.len,
        }
    }

    /// The address of `offset`, for the kernel to read from.
    pub fn ptr(&self, offset: usize) -> *const u8 {
        assert!(offset < self.len);
        // SAFETY: in bounds.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The start of the span, for memory the kernel and this thread share
    /// (a provided-buffer ring), written through raw pointers.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len is exactly the mapping this Region made.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowed_cpus;

    #[test]
    fn region_is_zeroed_and_writable() {
        let region = Region::map(1 << 20, PageKind::Transparent, None).unwrap();
        assert!(region.len() >= 1 << 20);
        // SAFETY: the region is ours and len bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[0] = 7;
        assert_eq!(bytes[0], 7);
    }

    #[test]
    fn normal_pages_report_what_the_host_gives() {
        let thp = Region::map(5 << 20, PageKind::Transparent, None).unwrap();
        assert_eq!(
            thp.as_ptr() as usize % HUGE_PAGE_BYTES,
            0,
            "THP needs 2 MiB alignment"
        );
        let expected = match memory::transparent_huge_pages_enabled() {
            true => PageKind::Transparent,
            false => PageKind::Normal,
        };
        assert_eq!(thp.pages(), expected);
        let normal = Region::map(5000, PageKind::Normal, None).unwrap();
        assert_eq!((normal.pages(), normal.len()), (PageKind::Normal, 8192));
    }

    #[test]
    fn split_spans_start_on_pages_and_stay_inside() {
        let region = Region::map(1 << 20, PageKind::Normal, None).unwrap();
        let spans = region.split(&[5000, 100, 4096]);
        let base = region.as_ptr() as usize;
        let starts: Vec<usize> = spans.iter().map(|s| s.ptr(0) as usize - base).collect();
        assert_eq!(starts, [0, 8192, 12288]);
        assert_eq!(spans[1].len(), 100);
        let even = region.spans(3);
        assert!(even.iter().all(|s| s.len() == 348160));
    }

    #[test]
    fn memory_lands_on_the_node_it_is_bound_to() {
        let cpus = allowed_cpus().unwrap();
        let Some(node) = memory::cpu_node(cpus[0]) else {
            println!(
                "SKIPPED: this kernel reports no NUMA node for cpu {}",
                cpus[0]
            );
            return;
        };
        for pages in [PageKind::Transparent, PageKind::Normal] {
            let region = Region::map(8 << 20, pages, Some(node)).unwrap();
            let nodes = region.page_nodes().unwrap();
            assert_eq!(nodes.len(), 4, "one sample per 2 MiB");
            assert!(nodes.iter().all(|&n| n == node), "{pages:?}: {nodes:?}");
        }
        // A node that is not online is refused before anything is touched.
        let offline = (0..64)
            .find(|n| !std::path::Path::new(&format!("/sys/devices/system/node/node{n}")).exists())
            .unwrap();
        let err = Region::map(1 << 20, PageKind::Transparent, Some(offline))
            .err()
            .expect("binding to an offline node fails");
        assert!(
            err.to_string().contains(&format!("NUMA node {offline}")),
            "{err}"
        );
        // Nodes are numbered from 0: below the first missing one, all exist.
        if offline == 1 {
            println!("one NUMA node here (node {node}): placement across nodes not exercised");
        }
    }

    /// Reserves `count` more 2 MiB pages for the closure, then gives them back.
    fn with_huge_pages_reserved(count: u64, f: impl FnOnce()) {
        const NR: &str = "/proc/sys/vm/nr_hugepages";
        let read = || -> u64 { std::fs::read_to_string(NR).unwrap().trim().parse().unwrap() };
        let before = read();
        std::fs::write(NR, (before + count).to_string()).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::fs::write(NR, read().saturating_sub(count).to_string()).unwrap();
        result.unwrap();
    }

    #[test]
    fn huge_tlb_pages_are_taken_when_reserved_and_refused_when_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: reserving huge pages needs root");
            return;
        }
        let available = memory::huge_pages_available().unwrap() as usize;
        let err = Region::map((available + 1) * HUGE_PAGE_BYTES, PageKind::HugeTlb, None)
            .err()
            .expect("more huge pages than are free");
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory, "{err}");
        assert!(err.to_string().contains("reserved 2 MiB pages"), "{err}");

        with_huge_pages_reserved(2, || {
            let available = memory::huge_pages_available().unwrap();
            assert!(
                available >= 2,
                "the kernel found only {available} free 2 MiB pages"
            );
            let node = memory::cpu_node(allowed_cpus().unwrap()[0]);
            let region = Region::map(3 << 20, PageKind::HugeTlb, node).unwrap();
            assert_eq!((region.pages(), region.len()), (PageKind::HugeTlb, 4 << 20));
            assert_eq!(memory::huge_pages_available().unwrap(), available - 2);
            let nodes = region.page_nodes().unwrap();
            assert_eq!(nodes.len(), 2);
            if let Some(node) = node {
                assert!(nodes.iter().all(|&n| n == node), "{nodes:?}");
            }
            // SAFETY: the region is ours and len bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len()) };
            assert!(bytes.iter().all(|&b| b == 0));
        });
    }
}
