# shellcheck shell=bash
# packages.sh - the Debian packages Substruct's tests and lab need (sourced).
# ensure_packages installs whichever are missing (needs root, network to Debian's mirror).
SUBSTRUCT_PACKAGES=(
  nats-server                      # NATS + JetStream (2.9.10 on Debian 12)
  apache2-utils                    # htpasswd: bcrypt hashes of the hub's passwords (deploy/nats/gen-site)
  qemu-system-x86 ipxe-qemu ovmf   # real PXE clients: SeaBIOS + iPXE ROM, OVMF
  ipxe pxelinux syslinux-common    # loaders the edge serves
  shim-signed grub-efi-amd64-signed  # the Secure Boot chain: Microsoft-signed shim, Debian-signed GRUB
  linux-image-amd64 busybox-static # the live image's kernel; busybox for its debug shell
  cpio kmod xz-utils file          # building the live image
  qemu-utils zstd                  # qemu-img, zstd: qcow2 and compressed images for the deploy tests
  musl-tools                       # static prospector (musl target)
  kea-dhcp4-server kea-dhcp6-server kea-admin  # DHCP peers and perfdhcp (benchmarks)
  tftp-hpa tftpd-hpa atftp         # TFTP clients, and the TFTP peer
  dnsmasq isc-dhcp-relay isc-dhcp-client udhcpc  # DHCP clients, relay, reference lab
  nginx                            # HTTP peer (benchmarks)
  iproute2 curl procps psmisc socat openssl   # openssl: TLS certificates for the leaf-node tests
  syslinux syslinux-efi mtools dosfstools  # the marker disk image (deploy/disk-image/build)
  debian-installer-12-netboot-amd64        # d-i kernel + initrd (the preseed system test)
  openipmi                         # ipmi_sim: the real IPMI 2.0 LAN BMC the BMC driver tests drive
  python3-pip                      # pip, for sushy-tools (the Redfish emulator) below
  chromium chromium-driver         # headless browser + WebDriver: the web UI tests
  debootstrap e2fsprogs            # the cloud image (deploy/cloud-image/build)
  fdisk openssh-client             # sfdisk (the seed partition test); ssh into the deployed cloud image
)

# sushy-tools' Redfish emulator (fake driver, no libvirt needed) for the Redfish driver tests.
SUBSTRUCT_SUSHY_TOOLS_VERSION=2.2.0
# schemathesis replays the committed OpenAPI document against a real controller (contract test).
SUBSTRUCT_SCHEMATHESIS_VERSION=4.32.5

ensure_packages() {
  local missing=() p
  for p in "${SUBSTRUCT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: packages (nginx, tftpd-hpa, kea, dnsmasq) must not start their services;
    # tests start their own instances inside network namespaces.
    local prc=/usr/sbin/policy-rc.d had_prc=0
    [ -e "$prc" ] && had_prc=1
    [ "$had_prc" = 1 ] || printf '#!/bin/sh\nexit 101\n' > "$prc"
    chmod 755 "$prc" 2>/dev/null || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ "$had_prc" = 1 ] || rm -f "$prc"
  fi
  # The Redfish emulator: not packaged in Debian 12, so from PyPI at a pinned version. Debian's
  # Python is "externally managed" (PEP 668): pip installs into /usr/local, beside Debian's modules.
  if ! command -v sushy-emulator >/dev/null || ! python3 -c 'import bcrypt' 2>/dev/null; then
    echo "installing sushy-tools==$SUBSTRUCT_SUSHY_TOOLS_VERSION (pip)"
    python3 -m pip install --quiet --break-system-packages "sushy-tools==$SUBSTRUCT_SUSHY_TOOLS_VERSION" \
      || python3 -m pip install --quiet "sushy-tools==$SUBSTRUCT_SUSHY_TOOLS_VERSION"
  fi
  if ! command -v schemathesis >/dev/null \
    || ! schemathesis --version 2>/dev/null | grep -q "$SUBSTRUCT_SCHEMATHESIS_VERSION"; then
    echo "installing schemathesis==$SUBSTRUCT_SCHEMATHESIS_VERSION (pip)"
    python3 -m pip install --quiet --break-system-packages "schemathesis==$SUBSTRUCT_SCHEMATHESIS_VERSION" \
      || python3 -m pip install --quiet "schemathesis==$SUBSTRUCT_SCHEMATHESIS_VERSION"
  fi
  # The static prospector is built for musl; the image build falls back to static glibc without it.
  if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl || echo "warning: musl target unavailable; static glibc fallback"
  fi
}
