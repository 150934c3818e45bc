"""What the virtio-sound spec requires of a driver, as conformance rules (:mod:`pyvmm.conformance`).

One rule per sentence of ``device-types/sound/description.tex``'s driver requirements (the list
``driver-conformance.tex`` points to), quoted, plus the PCM command lifecycle. A handler that
finds a driver breaking one raises :class:`~pyvmm_snd.errors.RequestError` with ``rule=`` (the
request is also refused) or reports it directly when the device tolerates the mistake.
"""

from __future__ import annotations

from pyvmm.conformance import Rule

_INIT = "5.14.5 Device Initialization"
_ITEMS = "5.14.6.1 Item Information Request"
_PARAMS = "5.14.6.6.2 PCM Stream Parameters"
_OUT = "5.14.6.6.5 PCM Output Stream"
_IN = "5.14.6.6.6 PCM Input Stream"
_CTL_VALUE = "5.14.6.9.3 Control Element Value"
_CTL_META = "5.14.6.9.4 Control Element Metadata"
_LIFECYCLE = "5.14.6.6.1 PCM Command Lifecycle"

EVENT_BUFFER_SIZE = Rule("snd.init.event-buffer-size", "MUST", _INIT,
                         "The driver MUST populate the event queue with empty buffers of at least the struct "
                         "virtio_snd_event size.")
EVENT_BUFFER_READABLE = Rule("snd.init.event-buffer-readable", "MUST", _INIT,
                            "The driver MUST NOT put a device-readable buffers in the event queue.")
ITEM_RANGE = Rule("snd.info.item-range", "MUST", _ITEMS,
                  "The driver MUST NOT set start_id and count such that start_id + count is greater than the "
                  "total number of particular items that is indicated in the device configuration space.")
ITEM_RESPONSE_SIZE = Rule("snd.info.response-size", "MUST", _ITEMS,
                          "The driver MUST provide a buffer of sizeof(struct virtio_snd_hdr) + count * size bytes "
                          "for the response.")
PERIOD_DIVIDES_BUFFER = Rule("snd.params.period-divides-buffer", "MUST", _PARAMS,
                             "period_bytes MUST be a divider buffer_bytes, i.e. buffer_bytes % period_bytes == 0.")
UNDEFINED_VALUE = Rule("snd.params.undefined-value", "MUST", _PARAMS,
                       "The driver MUST NOT set undefined feature, format and rate values.")
UNADVERTISED_VALUE = Rule("snd.params.unadvertised-value", "MUST", _PARAMS,
                          "The driver MUST NOT set the feature, format, and rate that are not specified in the "
                          "stream configuration.")
CHANNELS_RANGE = Rule("snd.params.channels-range", "MUST", _PARAMS,
                      "The driver MUST NOT set the channels value as less than the channels_min or greater than "
                      "the channels_max values specified in the stream configuration.")
SHMEM_BOTH = Rule("snd.params.shmem-both", "MUST", _PARAMS,
                  "The driver MUST NOT set the VIRTIO_SND_PCM_F_SHMEM_HOST and VIRTIO_SND_PCM_F_SHMEM_GUEST bits at "
                  "the same time.")
PADDING_ZERO = Rule("snd.params.padding-zero", "MUST", _PARAMS, "The driver MUST initialize the padding byte to 0.")
TX_PERIOD_SIZE = Rule("snd.tx.period-size", "SHOULD", _OUT,
                      "The driver SHOULD populate the tx queue with period_bytes sized buffers. The only exception "
                      "is the end of the stream.")
TX_DEVICE_WRITABLE = Rule("snd.tx.device-writable", "MUST", _OUT,
                          "The driver MUST NOT place device-writable buffers into the tx queue.")
RX_PERIOD_SIZE = Rule("snd.rx.period-size", "SHOULD", _IN,
                      "The driver SHOULD populate the rx queue with period_bytes sized empty buffers before "
                      "starting the stream.")
RX_DEVICE_READABLE = Rule("snd.rx.device-readable", "MUST", _IN,
                          "The driver MUST NOT place device-readable buffers into the rx queue.")
CTL_READ_ACCESS = Rule("snd.ctl.read-access", "MUST", _CTL_VALUE,
                       "The driver MUST NOT send READ request if the element does not have ACCESS_READ access right.")
CTL_WRITE_ACCESS = Rule("snd.ctl.write-access", "MUST", _CTL_VALUE,
                        "The driver MUST NOT send WRITE request if the element does not have ACCESS_WRITE access "
                        "right.")
CTL_TLV_READ_ACCESS = Rule("snd.ctl.tlv-read-access", "MUST", _CTL_META,
                           "The driver MUST NOT send TLV_READ request if the element does not have ACCESS_TLV_READ "
                           "access right.")
CTL_TLV_WRITE_ACCESS = Rule("snd.ctl.tlv-write-access", "MUST", _CTL_META,
                            "The driver MUST NOT send TLV_WRITE request if the element does not have "
                            "ACCESS_TLV_WRITE access right.")
CTL_TLV_COMMAND_ACCESS = Rule("snd.ctl.tlv-command-access", "MUST", _CTL_META,
                              "The driver MUST NOT send TLV_COMMAND request if the element does not have "
                              "ACCESS_TLV_COMMAND access right.")
CTL_TLV_SIZE = Rule("snd.ctl.tlv-size", "MUST", _CTL_META,
                    "The driver MUST NOT submit the value field larger than 65536 bytes.")
LIFECYCLE = Rule("snd.pcm.lifecycle", "LIFECYCLE", _LIFECYCLE,
                 "A PCM stream has the following command lifecycle: SET PARAMETERS (valid transitions: set "
                 "parameters, prepare), PREPARE (set parameters, prepare, start, release), START (stop), STOP "
                 "(start, release), RELEASE (set parameters, prepare).")
IO_NOT_PREPARED = Rule("snd.pcm.io-not-prepared", "LIFECYCLE", _LIFECYCLE,
                       "PREPARE ... Output only: the driver transfers data for pre-buffing. START ... The driver "
                       "transfers data to/from the stream.")
