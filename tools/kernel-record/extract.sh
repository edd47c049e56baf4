#!/usr/bin/env bash
# Turns the console log (stdin) into a trace file: a '#'-prefixed header, then the ftrace lines of
# the DMA/IOMMU events. extract.sh <mode> <kernel> <qemu-version> <io-script> <qemu-command>
set -euo pipefail
mode="$1" kver="$2" qver="$3" io="$4" cmd="$5"
log="$(cat)"
echo "# iovalink kernel trace v1"
echo "# mode $mode"
echo "# kernel-release $kver"
echo "# qemu $qver"
echo "# io-script $io"
echo "# qemu-command $cmd"
echo "$log" | sed -n '/===IOVALINK-META-BEGIN===/,/===IOVALINK-META-END===/p' | grep -v '===IOVALINK' | sed 's/^/# /'
echo "$log" | sed -n '/===IOVALINK-TRACE-BEGIN===/,/===IOVALINK-TRACE-END===/p' \
  | grep -E ' (alloc_iova|alloc_iova_ret|free_iova|map_page|unmap_page|map_sg|unmap_sg|dma_alloc|dma_free|fq_timeout|tbl_map|tbl_map_ret|tbl_unmap|map|unmap|swiotlb_bounced|tracing_mark_write):' \
  | sed -E -e 's/^ *[^ ]+-[0-9]+ +(\[[0-9]+\]) [^ ]+ +/\1 /' -e 's/: \([a-z_0-9]+\+0x0\/0x[0-9a-f]+\) /: /' -e 's/: IOMMU: /: /'
