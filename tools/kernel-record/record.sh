#!/usr/bin/env bash
# Records a Linux kernel's DMA/IOMMU events under QEMU (TCG) for `iovalink kernel-diff`.
#
#   tools/kernel-record/record.sh --mode strict|lazy|swiotlb|forcedac --io <io-script> --out <trace>
#       [--kernel /boot/vmlinuz-<ver>] [--modules /usr/lib/modules/<ver>] [--timeout 300]
#
# Builds a busybox initramfs holding the NVMe driver (nvme.ko and everything modules.dep lists for
# it, plus crct10dif_generic), boots it on q35 with an emulated NVMe disk, traces the iommu
# map/unmap tracepoints and the kprobes of probes.txt while the I/O script runs, and writes the
# trace with a header (kernel, QEMU, command line, reserved regions, mode). Needs:
#   apt-get install qemu-system-x86 linux-image-amd64 busybox-static cpio
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mode=strict io="" out="" kernel="" modules="" timeout_s=300
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode="$2"; shift 2 ;;
    --io) io="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --kernel) kernel="$2"; shift 2 ;;
    --modules) modules="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "record.sh: unknown argument '$1' (expected --mode, --io, --out, --kernel, --modules, --timeout)" >&2; exit 2 ;;
  esac
done
[ -n "$io" ] && [ -f "$io" ] || { echo "record.sh: --io <script> is required and must exist" >&2; exit 2; }
[ -n "$out" ] || { echo "record.sh: --out <trace file> is required" >&2; exit 2; }
if [ -z "$kernel" ]; then kernel="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)"; fi
[ -f "$kernel" ] || { echo "record.sh: no kernel image (install linux-image-amd64 or pass --kernel)" >&2; exit 2; }
kver="${kernel##*/vmlinuz-}"
[ -n "$modules" ] || modules="/usr/lib/modules/$kver"
[ -f "$modules/modules.dep" ] || { echo "record.sh: $modules/modules.dep not found (pass --modules)" >&2; exit 2; }
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || { echo "record.sh: busybox not found (apt-get install busybox-static)" >&2; exit 2; }
qemu="$(command -v qemu-system-x86_64 || true)"
[ -n "$qemu" ] || { echo "record.sh: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 2; }

case "$mode" in
  strict) append="intel_iommu=on iommu.strict=1"; iommu_dev=(-device intel-iommu) ;;
  lazy) append="intel_iommu=on iommu.strict=0"; iommu_dev=(-device intel-iommu) ;;
  forcedac) append="intel_iommu=on iommu.strict=1 iommu.forcedac=1"; iommu_dev=(-device intel-iommu) ;;
  swiotlb) append="intel_iommu=off swiotlb=force"; iommu_dev=() ;;
  *) echo "record.sh: --mode must be strict, lazy, forcedac or swiotlb, got '$mode'" >&2; exit 2 ;;
esac
# threadirqs: interrupt handlers and softirqs run in threads, so a kprobe can never fire inside
# another kprobe's handler on the same CPU (that would be counted as a miss and lose the event)
append="console=ttyS0 panic=-1 quiet loglevel=4 threadirqs $append"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,modules}
cp "$busybox" "$root/bin/busybox"
cp "$here/init.sh" "$root/init"
chmod +x "$root/init"
cp "$here/probes.txt" "$root/probes.txt"
cp "$io" "$root/io.sh"
# nvme.ko and its dependencies in load order (modules.dep lists deps nearest-first, so reverse)
"$here/resolve-modules.sh" "$modules" crct10dif_generic nvme > "$work/order"
: > "$root/modules.order"
while read -r rel; do
  base="$(basename "$rel")"
  case "$base" in
    *.ko.xz) xz -dc "$modules/$rel" > "$root/modules/${base%.xz}"; base="${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$modules/$rel" > "$root/modules/${base%.zst}"; base="${base%.zst}" ;;
    *.ko.gz) gzip -dc "$modules/$rel" > "$root/modules/${base%.gz}"; base="${base%.gz}" ;;
    *) cp "$modules/$rel" "$root/modules/$base" ;;
  esac
  echo "$base" >> "$root/modules.order"
done < "$work/order"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"
truncate -s 64M "$work/disk.raw"

qemu_ver="$("$qemu" --version | head -1)"
cmd=("$qemu" -M q35 -m 512 -smp 1 -nographic -nodefaults -serial stdio -no-reboot
  "${iommu_dev[@]}" -device nvme,drive=nvm,serial=iovalink0 -drive if=none,id=nvm,file="$work/disk.raw",format=raw
  -kernel "$kernel" -initrd "$work/initrd.gz" -append "$append")
echo "record.sh: booting $kver ($mode) under TCG; this takes a minute or two" >&2
timeout "$timeout_s" "${cmd[@]}" < /dev/null > "$work/console.log" 2>&1 || true
if ! grep -q '===IOVALINK-TRACE-END===' "$work/console.log"; then
  cp "$work/console.log" "$out.console.log"
  echo "record.sh: no complete trace on the console (see $out.console.log)" >&2
  exit 1
fi
tr -d '\r' < "$work/console.log" | "$here/extract.sh" "$mode" "$kver" "$qemu_ver" "$(basename "$io")" "${cmd[*]}" > "$out"
echo "record.sh: wrote $out ($(grep -vc '^#' "$out") trace lines)" >&2
