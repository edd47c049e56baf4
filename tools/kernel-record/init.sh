#!/bin/busybox sh
# PID 1 of the recording initramfs (tools/kernel-record): mounts the pseudo file systems, arms
# the iommu tracepoints and the kprobes of probes.txt, loads the NVMe driver, runs the I/O script
# and prints the trace on the console between markers, then powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
echo 0 > $T/tracing_on
echo 32768 > $T/buffer_size_kb
echo local > $T/trace_clock
while read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  echo "$line" >> $T/kprobe_events 2>/dev/null || echo "IOVALINK-NOTE probe-rejected: $line"
done < /probes.txt
[ -d $T/events/kd ] && echo 1 > $T/events/kd/enable
for e in iommu/map iommu/unmap swiotlb/swiotlb_bounced; do
  [ -f $T/events/$e/enable ] && echo 1 > $T/events/$e/enable
done
echo 1 > $T/tracing_on
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "IOVALINK-NOTE insmod-failed: $m"; done
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
echo "IOVALINK-MARK io-begin" > $T/trace_marker
sh /io.sh > /tmp/io.log 2>&1
echo "IOVALINK-MARK io-end" > $T/trace_marker
echo 0 > $T/tracing_on
echo "===IOVALINK-META-BEGIN==="
echo "kernel $(uname -r)"
echo "cmdline $(cat /proc/cmdline)"
for g in /sys/kernel/iommu_groups/*; do
  [ -d "$g" ] || continue
  for d in "$g"/devices/*; do echo "group $(basename "$g") device $(basename "$d")"; done
  while read -r a b c; do echo "reserved $(basename "$g") $a $b $c"; done < "$g/reserved_regions"
  [ -f "$g/type" ] && echo "grouptype $(basename "$g") $(cat "$g/type")"
done
grep -i 'PCI Bus' /proc/iomem | sed 's/^/iomem /'
dmesg | grep -iE 'iommu|dmar|swiotlb|software io tlb|nvme' | sed 's/^/dmesg /'
sed 's/^/iolog /' /tmp/io.log
for c in $T/per_cpu/cpu*; do echo "ring $(basename "$c") $(grep -i overrun "$c/stats")"; done
# per probe: hits and misses (a miss is a probe hit while another probe handler ran: a lost event)
while read -r name hits misses; do echo "kprobe-profile $name $hits $misses"; done < $T/kprobe_profile
echo "===IOVALINK-META-END==="
echo "===IOVALINK-TRACE-BEGIN==="
cat $T/trace
echo "===IOVALINK-TRACE-END==="
sync
poweroff -f
