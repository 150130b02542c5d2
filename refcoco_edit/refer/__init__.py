"""Reading RefCOCO-family data in REFER's layout: the refs pickle (restricted unpickler), COCO
instances and their masks, indexed column-wise."""
