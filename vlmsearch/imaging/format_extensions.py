"""The format plugins' file extensions (:mod:`vlmsearch.imaging.formats`), apart from their
code, so that the scan depends on these names only."""

HEIF_EXTENSIONS = (".heic", ".heif", ".heics", ".heifs", ".hif")
AVIF_EXTENSIONS = (".avif", ".avifs")

# Extensions of the raw formats LibRaw reads (LibRaw identifies files by their content;
# the formats are those of https://www.libraw.org/supported-cameras).
RAW_EXTENSIONS = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
    ".orf", ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".erf", ".kdc",
    ".dcr", ".mrw", ".mos", ".mef", ".iiq", ".raw", ".gpr",
)  # fmt: skip

EXTENSIONS = HEIF_EXTENSIONS + AVIF_EXTENSIONS + RAW_EXTENSIONS
