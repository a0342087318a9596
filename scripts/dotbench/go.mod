module dotbench

go 1.26
