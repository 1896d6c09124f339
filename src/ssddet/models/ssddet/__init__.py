"""SSD-Det refiner (ICCV 2023): sampler, SPSD, MIL stages, SISD and top-k merge, composed in `refiner`."""

from .refiner import LOSS_NAMES, RefinerOutput, SSDDetRefiner

__all__ = ["LOSS_NAMES", "RefinerOutput", "SSDDetRefiner"]
